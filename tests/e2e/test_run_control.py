"""Runs that must lose nothing: signals, a dead launcher, divergence, --load auto (CPU, tiny BERT).

- SIGTERM at a step drawn from a seeded RNG (sent once the log shows it) stops the run after
  a step with its checkpoint (exit code 75); the same command, with ``--load auto`` from the
  start, then finishes the run bit-identical to an uninterrupted one (final eval loss, eval
  history, subnetwork digest). One process, and two under torchrun (ZeRO-2), where every worker
  is signalled as SLURM would, at slightly different times, and the second session loses its
  launcher (kill -9 of torchrun): the workers stop, save and exit on their own.
- lr 1e4 diverges a run resumed from a good folder: exit code 3, one line naming the step,
  and nothing non-finite (or later than the last finite step) reaches the folder.
- --summary naming a folder and a TensorBoard job_name with a path in it: exit 2 in one line.
"""
from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from support import ROOT, cpu_env, free_port, run

from megaraptr.runtime import checkpoints

STEPS = 16
STOPPED = re.compile(r"megaraptr-train: stopped after step (\d+) on (.+): checkpoint step\1 saved "
                     r"in (.+); the same command with --load auto continues \(exit code 75\)")


def write_config(path: Path, *, stage: int = 0, lr: float = 1e-3, **top) -> Path:
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config["zero_optimization"] = {"stage": stage}
    config["tensorboard"]["enabled"] = False
    config["optimizer"]["params"]["lr"] = lr
    config["scheduler"]["params"].update(warmup_max_lr=lr, warmup_num_steps=3)
    config.update(top)
    path.write_text(json.dumps(config))
    return path


def command(config: Path, tmp: Path, *extra) -> list:
    """The one fixed command of a run: safe to repeat after any stop (--load auto)."""
    return ["-m", "megaraptr.train", "--deepspeed_config", config, "--train-steps", STEPS,
            "--eval-interval", 8, "--log-interval", 1, "--save", tmp / "ckpt", "--load", "auto",
            "--summary", tmp / "summary.json", *extra]


class Launch:
    """A command started in the background, its output collected line by line."""

    def __init__(self, cmd: list, env: dict):
        self.proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, line: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.text:
            assert self.proc.poll() is None or self.reader.is_alive(), self.text[-3000:]
            assert time.monotonic() < deadline, f"no {line!r}:\n{self.text[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 240) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(timeout)  # EOF: every process holding the pipe has exited
        assert not self.reader.is_alive(), f"output still open:\n{self.text[-3000:]}"
        return rc


def torchrun_cmd(nproc: int, args: list) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc,
            "--master_addr", "127.0.0.1", "--master_port", free_port()] + args


def workers_of(launcher: psutil.Process, count: int) -> list:
    deadline = time.monotonic() + 60
    while len(launcher.children()) < count:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return launcher.children()


def checkpoint_weights_finite(folder: Path) -> bool:
    states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    return all(torch.isfinite(t).all() for t in states["module"].values())


def summary(tmp: Path) -> dict:
    return json.loads((tmp / "summary.json").read_text())


def assert_same_run(resumed: dict, straight: dict) -> None:
    assert resumed["steps"] == straight["steps"] == STEPS and resumed["finished"]
    for key in ("final_eval_loss", "subnetwork_digest", "eval_history", "layer_flops_fraction"):
        assert resumed[key] == straight[key], key  # CPU fp32: to the last bit


def stop_step(rng: random.Random) -> int:
    return rng.randint(3, STEPS - 9)


# ------------------------------------------------------------------ one process
def test_sigterm_then_load_auto_equals_the_uninterrupted_run(tmp_path):
    config = write_config(tmp_path / "ds.json")
    env = cpu_env()
    straight = tmp_path / "straight"
    run([sys.executable] + command(config, straight, "--save-every-minutes", "0.002"),
        env=env, timeout=300)
    timed = sorted(p.name for p in (straight / "ckpt").glob("step*"))
    assert len(timed) > 2 and f"step{STEPS}" in timed  # saved as the minutes passed, and at 16
    tmp = tmp_path / "stopped"
    at = stop_step(random.Random(13))
    first = Launch([sys.executable] + command(config, tmp), env)
    first.wait_for(f"megaraptr: step {at}/{STEPS}:")
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 75, first.text[-3000:]
    assert "--load auto: no checkpoint under" in first.text  # the first session starts fresh
    (step, reason, folder), = STOPPED.findall(first.text)
    assert int(step) >= at and reason == "SIGTERM" and folder == str(tmp / "ckpt")
    assert (tmp / "ckpt" / "latest").read_text() == f"step{step}"
    assert f"megaraptr: step {step}: SIGTERM: saving a checkpoint and stopping" in first.text
    stop_save = checkpoints.resolve(str(tmp / "ckpt"), f"step{step}")  # sha256 of every file
    assert stop_save.manifest["step"] == int(step)  # saved complete, like any other save
    assert not (tmp / "ckpt" / ".megaraptr.lock").exists()  # released on the way out
    run([sys.executable] + command(config, tmp), env=env, timeout=300)  # the same command
    assert_same_run(summary(tmp), summary(straight))
    assert summary(tmp)["resumed_from"] == str(tmp / "ckpt" / f"step{step}")


# ------------------------------------------------------------------ two processes
@pytest.mark.distributed
def test_signals_and_a_dead_launcher_on_two_ranks_lose_nothing(tmp_path):
    config = write_config(tmp_path / "ds.json", stage=2)
    env = cpu_env(MEGARAPTR_CACHE=tmp_path / "cache")
    run(torchrun_cmd(2, command(config, tmp_path / "straight")), env=env, timeout=300)
    tmp, rng = tmp_path / "stopped", random.Random(29)
    # session 1: SIGTERM to each worker, as SLURM sends it to every process of the job step
    at = stop_step(rng)
    first = Launch(torchrun_cmd(2, command(config, tmp)), env)
    first.wait_for(f"megaraptr: step {at}/{STEPS}:")
    for worker in workers_of(psutil.Process(first.proc.pid), 2):
        worker.send_signal(signal.SIGTERM)
        time.sleep(rng.uniform(0.0, 0.4))  # the ranks hear it at different times
    assert first.finish() == 1  # torchrun reports any worker's non-zero exit as 1
    (step1, reason, _), = STOPPED.findall(first.text)
    assert int(step1) >= at and reason.startswith("SIGTERM"), first.text[-3000:]
    assert "exitcode  : 75" in first.text
    assert (tmp / "ckpt" / "latest").read_text() == f"step{step1}"
    # session 2: the launcher dies (kill -9); its workers stop, save and exit on their own
    second = Launch(torchrun_cmd(2, command(config, tmp)), env)
    second.wait_for(f"megaraptr: step {int(step1) + 2}/{STEPS}:")
    workers = workers_of(psutil.Process(second.proc.pid), 2)
    second.proc.send_signal(signal.SIGKILL)
    try:
        psutil.wait_procs(workers, timeout=120)
    finally:
        for worker in workers:  # only if they trained on: stop them before failing
            if worker.is_running():
                worker.kill()
    second.finish()
    (step2, reason, _), = STOPPED.findall(second.text)
    assert int(step1) + 2 <= int(step2) < STEPS, second.text[-3000:]
    # each rank looks at /proc once a second: rank 1 may see the shared launcher die first
    assert re.fullmatch(r"the death of (the launcher \(pid \d+\)|another rank's launcher)",
                        reason), reason
    assert (tmp / "ckpt" / "latest").read_text() == f"step{step2}"
    # session 3: the same command again finishes the run as if nothing had happened
    run(torchrun_cmd(2, command(config, tmp)), env=env, timeout=300)
    assert_same_run(summary(tmp), summary(tmp_path / "straight"))


# ------------------------------------------------------------------ divergence, bad outputs
def test_divergence_exits_3_and_never_reaches_the_checkpoints(tmp_path):
    good, bad = write_config(tmp_path / "good.json"), write_config(tmp_path / "bad.json", lr=1e4)
    env = cpu_env()
    args = ["--train-steps", 40, "--save", tmp_path / "ckpt", "--load", "auto",
            "--log-interval", 1, "--keep-checkpoints", 0]  # keep every step's, to inspect
    run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config", good, *args,
         "--exit-at-step", 2], env=env, timeout=300)
    good_bytes = (tmp_path / "ckpt" / "step2" / "mp_rank_00_model_states.pt").read_bytes()
    proc = run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config", bad, *args,
                "--save-interval", 1], env=env, timeout=300, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("megaraptr-train:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    step = int(re.fullmatch(r"megaraptr-train: error: step (\d+): non-finite training loss "
                            r"\(nan\) on 1 of 1 rank\(s\); stopped before anything of this step "
                            r'was saved \(raptr.on_nonfinite "stop"\)', lines[0]).group(1))
    assert step > 3  # resumed at 2, trained some steps at lr 1e4 first
    saved = sorted(int(p.name[4:]) for p in (tmp_path / "ckpt").glob("step*"))
    assert saved == list(range(2, step))  # every step before it, none from it on
    assert (tmp_path / "ckpt" / "latest").read_text() == f"step{step - 1}"
    assert all(checkpoint_weights_finite(tmp_path / "ckpt" / f"step{s}") for s in saved)
    assert (tmp_path / "ckpt" / "step2" / "mp_rank_00_model_states.pt").read_bytes() == good_bytes


@pytest.mark.parametrize("extra, tensorboard, message", [
    (["--summary", "{tmp}"], None, "--summary: {tmp} is a folder; give a file, such as "
                                   "{tmp}/summary.json"),
    ([], {"enabled": True, "output_path": "{tmp}/tb", "job_name": "../../x"},
     "tensorboard.job_name: '../../x' is not one folder name; allowed: a name without '/', "
     "'\\' or '..' (it is a folder under output_path)"),
])
def test_bad_outputs_exit_2_in_one_line_before_training(tmp_path, extra, tensorboard, message):
    fill = lambda v: json.loads(json.dumps(v).replace("{tmp}", str(tmp_path)))  # noqa: E731
    top = {"tensorboard": fill(tensorboard)} if tensorboard else {}
    config = write_config(tmp_path / "ds.json", **top)
    proc = run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config", config,
                "--train-steps", 5, *fill(extra)], timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"megaraptr-train: error: {fill(message)}"]
    assert not (tmp_path.parent / "x").exists()
