"""Checkpoint faults injected into real ``megaraptr-train`` runs, each with one exact outcome.

Tiny GPT, ZeRO-2, fp32, 6 steps, global batch 16 (micro-batch 8) on CPU. Two families of
launches:

- one process: a run holding ``--save`` (killed later) makes a second writer exit 2 before
  anything is built, and leaves a stale lock that the straight run (a checkpoint every step)
  takes over with a warning. From its checkpoints: a hostile pickle (manifest recomputed,
  as an attacker would) is refused in one line by ``--load``, by ``megaraptr-config validate
  --load`` and by DeepSpeed's own ``load_checkpoint``, and never runs; ``latest`` naming
  ``../x`` and incompatible runs (model, vocabulary, sequence length, ZeRO stage, precision,
  micro-batch) exit 2 in one line before anything is built;
- two processes, ``--load auto`` from the straight run's step 1 (a one-process checkpoint:
  accumulation 2 -> 1 keeps the global batch): rank 1's disk fills while it writes its
  optimizer file at step 6 (exit 74, one line, ``latest`` still at step 5, nothing partial
  left); then, on one process, step 5 missing rank 1's file, step 4 a truncated optimizer file
  and step 3 4 KiB of garbage in its tensor data fall back to step 2, one line each, and the
  run ends equal to the straight one (accumulation 1 -> 2): 1 -> 2 -> 1 processes, the same
  subnetworks and eval loss.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from support import ROOT, WORKERS, cpu_env, run, torchrun

from megaraptr.errors import CheckpointError
from megaraptr.runtime import checkpoints
from megaraptr.runtime.checkpoints import manifest

STEPS = 6
MARKER_CODE = "open({!r}, 'w').close()"


class Hostile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (MARKER_CODE.format(self.marker),))


def write_config(path: Path, *, accum: int) -> Path:
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config.update(train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=accum)
    config["zero_optimization"] = {"stage": 2}
    config["tensorboard"]["enabled"] = False
    config["scheduler"]["params"].update(warmup_num_steps=2, total_num_steps=STEPS)
    config["raptr"]["consistency_check_interval"] = 1
    path.write_text(json.dumps(config))
    return path


def flags(config: Path, *extra) -> list:
    return ["--deepspeed_config", str(config), "--model", "gpt", "--size", "tiny", "--seq-len",
            "32", "--train-steps", str(STEPS), "--eval-sequences", "8", *map(str, extra)]


def train(*args, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "megaraptr.train", *args], timeout=300, check=False,
               **kwargs)


def said(proc, prefix: str = "megaraptr") -> list:
    """The lines megaraptr wrote to stderr (errors and warnings), not DeepSpeed's logging."""
    return [line for line in proc.stderr.splitlines() if line.startswith(prefix)]


def flip_tensor_bytes(path: Path, count: int = 4096) -> None:
    """Overwrite ``count`` bytes in the middle of the largest tensor record of a torch file."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        f.write(bytes(range(256)) * (count // 256))


def copy_checkpoint(src: Path, dst: Path, tag: str) -> Path:
    shutil.copytree(src / tag, dst / tag)
    (dst / "latest").write_text(tag)
    return dst


# ------------------------------------------------------------------ one process
@pytest.fixture(scope="module")
def first(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults1")
    config = write_config(tmp / "accum2.json", accum=2)
    ckpt = tmp / "run"
    holder = subprocess.Popen([sys.executable, "-m", "megaraptr.train",
                               *flags(config, "--save", ckpt, "--train-steps", 300)],
                              cwd=ROOT, env=cpu_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (ckpt / ".megaraptr.lock").exists() and time.time() < deadline:
            assert holder.poll() is None, "the lock holder ended early"
            time.sleep(0.2)
        second = train(*flags(config, "--save", ckpt))
    finally:
        holder.kill()  # SIGKILL: no chance to release its lock
        holder.wait()
    stale = json.loads((ckpt / ".megaraptr.lock").read_text())
    straight = train(*flags(config, "--save", ckpt, "--save-interval", 1, "--keep-checkpoints", 0,
                            "--summary", tmp / "straight.json"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    return {"tmp": tmp, "config": config, "ckpt": ckpt, "holder": holder.pid, "second": second,
            "stale": stale, "straight": straight,
            "summary": json.loads((tmp / "straight.json").read_text())}


def test_a_second_writer_is_refused_before_anything_is_built(first):
    second, ckpt = first["second"], first["ckpt"]
    assert second.returncode == 2
    assert said(second) == [
        f"megaraptr-train: error: --save {ckpt}: in use by another run (host "
        f"{first['stale']['host']}, pid {first['holder']}, started {first['stale']['started']}); "
        "one run writes a folder at a time: wait for it to end or give another --save (if no "
        f"run uses it, remove {ckpt / '.megaraptr.lock'})"]
    assert "parameters" not in second.stdout  # no model was built


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(first):
    stale, pid = first["stale"], first["holder"]
    assert stale["pid"] == pid
    assert f"megaraptr: warning: took over the lock on {first['ckpt']} from a run that has ended " \
           f"(host {stale['host']}, pid {pid}, started {stale['started']}: process {pid} is " \
           "gone)" in said(first["straight"])
    assert not (first["ckpt"] / ".megaraptr.lock").exists()


def test_every_checkpoint_is_complete_and_latest_names_the_last(first):
    ckpt = first["ckpt"]
    assert sorted(os.listdir(ckpt)) == ["latest", *(f"step{s}" for s in range(1, STEPS + 1)),
                                        "zero_to_fp32.py", "zero_to_torch.py"]
    assert (ckpt / "latest").read_text() == "step6"
    for step in range(1, STEPS + 1):
        resume = checkpoints.resolve(str(ckpt), f"step{step}")
        assert resume.notes == () and resume.manifest["step"] == step
        assert resume.manifest["engine"]["global_batch"] == 16
        assert resume.manifest["run"] == {"model": "gpt", "size": "tiny", "vocab_size": 8192,
                                          "seq_len": 32, "objective": "causal"}


@pytest.fixture(scope="module")
def hostile(first):
    tmp = first["tmp"]
    folder = copy_checkpoint(first["ckpt"], tmp / "hostile", "step6") / "step6"
    marker = tmp / "hostile-code-ran"
    states = folder / "mp_rank_00_model_states.pt"
    sd = torch.load(states, weights_only=False)  # the attacker's side: their own file
    sd["train"]["note"] = Hostile(marker)
    torch.save(sd, states)
    content = manifest.read(str(folder))  # an attacker recomputes the checksums too
    content["files"].update(manifest.records(str(folder), [states.name], fsync=False))
    manifest.write(str(folder), content)
    config = first["config"]
    out = tmp / "deepspeed_load.json"
    return {"marker": marker, "file": states,
            "train": train(*flags(config, "--load", tmp / "hostile")),
            "validate": run([sys.executable, "-m", "megaraptr.tools.config", "validate", config,
                             "--model", "gpt", "--size", "tiny", "--train-steps", STEPS,
                             "--seq-len", "32", "--load", tmp / "hostile"], timeout=300,
                            check=False),
            "deepspeed": run([sys.executable, WORKERS / "checkpoint_worker.py", tmp / "hostile",
                              "step6", out], timeout=300, env=cpu_env(PYTHONPATH=ROOT))
            and json.loads(out.read_text())}


def test_a_hostile_pickle_is_refused_in_one_line_and_never_runs(hostile):
    refusal = (f"{hostile['file']}: refused: its pickle calls exec, which is neither a tensor, a "
               "plain container nor one of DeepSpeed's checkpoint classes (loading it could run "
               "code); resume only from checkpoints a trusted run wrote")
    for name, prog in (("train", "megaraptr-train"), ("validate", "megaraptr-config")):
        proc = hostile[name]
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert said(proc) == [f"{prog}: error: {refusal}"], name
    ds = hostile["deepspeed"]  # DeepSpeed's own engine.ds.load_checkpoint
    assert ds["loader"] == "megaraptr.runtime.checkpoints.engine_io._load"
    assert ds["error"] == {"type": "CheckpointError", "message": refusal}
    assert not hostile["marker"].exists()


def test_latest_naming_a_folder_outside_is_refused(first):
    tmp = first["tmp"]
    outside = copy_checkpoint(first["ckpt"], tmp / "outside", "step6")
    (outside / "latest").write_text("../run/step6")
    proc = train(*flags(first["config"], "--load", outside))
    assert proc.returncode == 2
    assert said(proc) == [
        f"megaraptr-train: error: {outside / 'latest'} names '../run/step6', not a checkpoint "
        f"folder inside {outside}; allowed: a folder name without a path separator (e.g. "
        "step20): write the tag to resume into it, or --load a folder whose latest file "
        "megaraptr wrote"]


@pytest.mark.parametrize("change, message", [
    (["--model", "bert"], "--model bert: {ck} was trained with --model gpt; resume with --model "
                          "gpt"),
    (["--vocab-size", "4096"], "--vocab-size 4096: {ck} was trained with --vocab-size 8192; "
                               "resume with --vocab-size 8192"),
    (["--seq-len", "64"], "--seq-len 64: {ck} was trained with --seq-len 32; resume with "
                          "--seq-len 32"),
    ({"zero_optimization": {"stage": 1}}, 'zero_optimization.stage 1: {ck} was saved under '
                                          'ZeRO-2; resume with "zero_optimization": {{"stage": '
                                          '2}} (ZeRO partitions do not convert between stages)'),
    ({"bf16": {"enabled": True}}, "precision bf16: {ck} was saved in fp32; resume in fp32 (the "
                                  "config's bf16/fp16 block)"),
    ({"train_micro_batch_size_per_gpu": 4}, "global batch 8 (4 x 2 accumulation x 1 data-parallel "
                                            "process): {ck} was trained with 16 (8 x 2 x 1); keep "
                                            "it: set gradient_accumulation_steps to 4"),
])
def test_incompatible_resumes_exit_2_before_anything_is_built(first, change, message):
    from megaraptr.tools.preflight import validate
    from megaraptr.tools.train_args import parse_args

    config, extra = first["config"], change
    if isinstance(change, dict):
        config = first["tmp"] / "changed.json"
        config.write_text(json.dumps(dict(json.loads(first["config"].read_text()), **change)))
        extra = []
    with pytest.raises(CheckpointError) as err:
        validate(parse_args(flags(config, "--load", first["ckpt"], *extra)))
    assert str(err.value) == message.format(ck=first["ckpt"] / "step6")
    assert err.value.exit_code == 2


def test_an_incompatible_resume_is_one_line_from_the_command(first):
    proc = train(*flags(first["config"], "--load", first["ckpt"], "--vocab-size", "4096"))
    assert proc.returncode == 2 and "parameters" not in proc.stdout
    assert said(proc) == [f"megaraptr-train: error: --vocab-size 4096: {first['ckpt']}/step6 was "
                          "trained with --vocab-size 8192; resume with --vocab-size 8192"]


# ------------------------------------------------------------------ two processes
@pytest.fixture(scope="module")
def two(first):
    tmp = first["tmp"]
    config = write_config(tmp / "accum1.json", accum=1)
    ckpt = copy_checkpoint(first["ckpt"], tmp / "two", "step1")  # saved by one process
    failed = torchrun(2, [WORKERS / "faulty_train.py", "1", ".partial-step6/zero_pp_rank_1", "--",
                          *flags(first["config"], "--save", ckpt, "--load", "auto",
                                 "--save-interval", 1, "--keep-checkpoints", 0)],
                      timeout=400, check=False, env=cpu_env(PYTHONPATH=ROOT))
    after = {"listing": sorted(os.listdir(ckpt)), "latest": (ckpt / "latest").read_text(),
             "newest": checkpoints.newest_complete(str(ckpt))}
    engines = {s: manifest.read(str(ckpt / f"step{s}"))["engine"] for s in range(1, STEPS)}
    (ckpt / "step5" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    optim = ckpt / "step4" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    truncated = (optim.stat().st_size // 2, optim.stat().st_size)
    os.truncate(optim, truncated[0])
    flip_tensor_bytes(ckpt / "step3" / "mp_rank_00_model_states.pt")
    on_one = train(*flags(config, "--load", ckpt, "--summary", tmp / "on_one.json"))
    return {"ckpt": ckpt, "failed": failed, "after": after, "engines": engines, "on_one": on_one,
            "truncated": truncated,
            "summary": (tmp / "on_one.json").exists() and
            json.loads((tmp / "on_one.json").read_text())}


def test_a_full_disk_on_one_rank_keeps_the_previous_checkpoint_and_exits_74(two):
    failed, ckpt = two["failed"], two["ckpt"]
    assert failed.returncode != 0 and "exitcode  : 74" in failed.stderr
    assert said(failed) == [
        "megaraptr-train: error: checkpoint step6 not saved (rank 1: writing zero_pp_rank_1_mp_"
        "rank_00_optim_states.pt: No space left on device (errno 28)); "
        f"{ckpt / 'latest'} still names step5"]
    assert two["after"] == {"listing": ["latest", "step1", "step2", "step3", "step4", "step5",
                                        "zero_to_fp32.py", "zero_to_torch.py"],
                            "latest": "step5", "newest": "step5"}


def test_corrupt_checkpoints_fall_back_one_line_each_and_two_processes_resume_on_one(two, first):
    proc, ckpt = two["on_one"], two["ckpt"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert said(proc) == [
        f"megaraptr: warning: {ckpt / 'step5'} fails verification: zero_pp_rank_1_mp_rank_00_"
        "optim_states.pt is missing",
        f"megaraptr: warning: {ckpt / 'step4'} fails verification: zero_pp_rank_0_mp_rank_00_"
        f"optim_states.pt has {two['truncated'][0]} bytes, the manifest {two['truncated'][1]}",
        f"megaraptr: warning: {ckpt / 'step3'} fails verification: mp_rank_00_model_states.pt: "
        f"sha256 differs from the manifest (changed or corrupted); resuming from "
        f"{ckpt / 'step2'}, the newest complete checkpoint"]
    assert "megaraptr: gradient_accumulation_steps 1 -> 2 to keep the checkpoint's global batch " \
           "of 16 sequences on 1 data-parallel process (saved by 2)" in proc.stdout
    straight, resumed = first["summary"], two["summary"]
    assert resumed["steps"] == STEPS and resumed["world_size"] == 1
    assert resumed["subnetwork_digest"] == straight["subnetwork_digest"]
    assert resumed["final_eval_loss"] == pytest.approx(straight["final_eval_loss"], rel=1e-6)


def test_a_one_process_checkpoint_resumes_on_two_keeping_the_global_batch(two, first):
    assert "megaraptr: gradient_accumulation_steps 2 -> 1 to keep the checkpoint's global batch " \
           "of 16 sequences on 2 data-parallel processes (saved by 1)" in two["failed"].stdout
    shape = {s: tuple(e[k] for k in ("world_size", "data_parallel_size", "grad_accum",
                                     "global_batch")) for s, e in two["engines"].items()}
    assert shape == {1: (1, 1, 2, 16), 2: (2, 2, 1, 16), 3: (2, 2, 1, 16), 4: (2, 2, 1, 16),
                     5: (2, 2, 1, 16)}
    # steps 2-5 trained on two processes, then 6 on one: the straight run's subnetworks and loss
    straight, resumed = first["summary"], two["summary"]
    assert resumed["subnetwork_digest"] == straight["subnetwork_digest"]
    assert resumed["final_eval_loss"] == pytest.approx(straight["final_eval_loss"], rel=1e-6)
