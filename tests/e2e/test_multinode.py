"""Multi-node launching: a two-node job formed on one machine over loopback.

``launch/multinode.sh`` in its per-node mode (``--no_ssh``) is started twice, as node 0 and
node 1 of a two-line hostfile, with the rendezvous on 127.0.0.1: DeepSpeed's launcher forms one
2-process job across the two "nodes", megaraptr trains a tiny BERT with RAPTR (ZeRO-2, the
cross-rank subnetwork check on every step), and each node prints its subnetwork digest. Both
digests must be equal, and equal to the digest of the masks the sampler gives for those steps
without any process group. ``launch/slurm.sbatch`` runs the same way under stand-ins for
``scontrol`` and ``srun`` that play a two-node allocation on this machine (SLURM itself is not
installed here), so its hostfile, master address and per-node ranks are exercised too, and
so is its requeue: USR1 (its ``--signal=B:USR1``) at a step drawn from a seeded RNG makes the
training save and exit 75, the script requeues the job, and the requeued script (same
arguments) resumes with ``--load auto`` and ends with the uninterrupted run's digest.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support import ROOT, cpu_env, free_port

STEPS = 10
DIGEST = re.compile(r"megaraptr: rank (\d) of 2 .*: (\d+) steps, subnetwork digest ([0-9a-f]{64})")


def _config(tmp: Path) -> Path:
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config["zero_optimization"] = {"stage": 2}
    config["tensorboard"]["enabled"] = False
    config["raptr"]["consistency_check_interval"] = 1
    path = tmp / "ds.json"
    path.write_text(json.dumps(config))
    return path


def _env(tmp: Path, **extra) -> dict:
    return cpu_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   MODEL="bert", SIZE="tiny", DS_CONFIG=_config(tmp),
                   MEGARAPTR_CACHE=tmp / "cache", **extra)


def _expected_digest() -> str:
    from megaraptr.core.mask import MaskDigest
    from megaraptr.core.sampler import SubnetworkSampler
    from megaraptr.methods import build_schedule, split_ds_config

    raptr, _ = split_ds_config(str(ROOT / "ds_configs" / "tiny_raptr_cpu.json"))
    schedule = build_schedule(raptr, num_layers=4, total_steps=STEPS)
    sampler, digest = SubnetworkSampler(schedule, 1234), MaskDigest()
    for step in range(1, STEPS + 1):
        digest.update(step, sampler.mask(step))
    return digest.hexdigest


def _digests(logs) -> dict:
    found = {}
    for log in logs:
        for rank, steps, digest in DIGEST.findall(log):
            found[int(rank)] = (int(steps), digest)
    return found


@pytest.mark.distributed
def test_two_nodes_over_loopback_train_identical_subnetworks(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    env = _env(tmp_path, HOSTFILE=hostfile, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    procs = [subprocess.Popen(
        ["timeout", "-k", "10", "180", "bash", str(ROOT / "launch" / "multinode.sh"),
         "--train-steps", str(STEPS), "--summary", str(tmp_path / f"node{rank}.json")],
        env=dict(env, NODE_RANK=str(rank)), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate()[0] for p in procs]
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, log[-4000:]
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in log
    digests = _digests(logs)
    assert digests == {0: (STEPS, _expected_digest()), 1: (STEPS, _expected_digest())}
    summary = json.loads((tmp_path / "node0.json").read_text())  # written by global rank 0
    assert summary["world_size"] == 2 and summary["finished"]
    assert summary["subnetwork_digest"] == _expected_digest()
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]


SRUN = """#!/usr/bin/env bash
# srun stand-in: one task per node of the allocation, all on this machine, SLURM_NODEID set,
# each task in its own process group; USR1/TERM go to every process of every task (as slurmstepd
# signals a step's processes); the exit code is the tasks' highest
while [[ $1 == --* ]]; do shift; done
pids=()
for n in 0 1; do SLURM_NODEID=$n setsid "$@" > "$SRUN_LOGS/node$n.log" 2>&1 & pids+=($!); done
forward() { for p in "${pids[@]}"; do kill -s "$1" -- "-$p" 2>/dev/null; done; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
rc=0
for p in "${pids[@]}"; do
  while :; do wait "$p"; r=$?; kill -0 "$p" 2>/dev/null || break; done
  [ "$r" -gt "$rc" ] && rc=$r
done
exit $rc
"""


def _slurm_env(tmp: Path) -> dict:
    fake = tmp / "bin"
    fake.mkdir()
    # two "hosts" that both resolve to this machine (the first is the rendezvous); requeue: noted
    (fake / "scontrol").write_text(
        "#!/usr/bin/env bash\nif [ \"$1\" = requeue ]; then echo \"$@\" >> \"$REQUEUES\"; "
        "exit 0; fi\nprintf 'localhost\\n127.0.0.1\\n'\n")
    (fake / "srun").write_text(SRUN)
    for tool in ("scontrol", "srun"):
        (fake / tool).chmod(0o755)
    env = _env(tmp, SLURM_JOB_ID="42", SLURM_JOB_NODELIST="node[0-1]",
               SLURM_SUBMIT_DIR=ROOT, GPUS_PER_NODE=1, MASTER_PORT=free_port(),
               SRUN_LOGS=tmp, REQUEUES=tmp / "requeues", HOSTFILE=tmp / "hostfile")
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    return env


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, \
            path.read_text()[-3000:] if path.exists() else "no log"
        time.sleep(0.1)


def _batch(env: dict, args: list, *, usr1_at: str = "", logs: Path = None) -> tuple:
    """Run launch/slurm.sbatch as SLURM would; with ``usr1_at``, send it USR1 (its
    --signal=B:USR1) once node 0's log shows that text. Returns its exit code and output."""
    proc = subprocess.Popen(["bash", str(ROOT / "launch" / "slurm.sbatch"), *map(str, args)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        if usr1_at:
            _wait_for(logs / "node0.log", usr1_at, proc)
            proc.send_signal(signal.SIGUSR1)
        out = proc.communicate(timeout=240)[0]
    except BaseException:  # a hung job: stop what it started (our own processes, by pid)
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        proc.kill()
        raise
    assert "Traceback" not in out, out[-3000:]
    return proc.returncode, out


@pytest.mark.distributed
def test_slurm_batch_script_requeues_on_usr1_and_resumes_the_same_job(tmp_path):
    env = _slurm_env(tmp_path)
    args = ["--train-steps", STEPS, "--save", tmp_path / "ckpt", "--log-interval", 1]
    at = random.Random(42).randint(2, STEPS - 5)
    rc, out = _batch(env, args, usr1_at=f"megaraptr: step {at}/{STEPS}:", logs=tmp_path)
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert rc == 0, out + "".join(log[-3000:] for log in logs)
    assert (tmp_path / "hostfile").read_text() == "localhost slots=1\n127.0.0.1 slots=1\n"
    assert "--master_addr=localhost" in logs[0]
    stopped = re.search(r"megaraptr-train: stopped after step (\d+) on SIGUSR1", logs[0])
    assert stopped and at <= int(stopped.group(1)) < STEPS, logs[0][-3000:]
    assert "slurm.sbatch: SIGUSR1 received" in out
    assert "slurm.sbatch: training stopped (exit 75): requeueing job 42" in out
    assert (tmp_path / "requeues").read_text() == "requeue 42\n"
    assert (tmp_path / "ckpt" / "latest").read_text() == f"step{stopped.group(1)}"
    # the requeued job: the same script and arguments resume (--load auto) and finish
    rc, out = _batch(dict(env, SLURM_RESTART_COUNT="1"), args)
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert rc == 0, out + "".join(log[-3000:] for log in logs)
    assert f"--load auto: resuming from {tmp_path / 'ckpt'}/step{stopped.group(1)}" in logs[0]
    assert _digests(logs) == {0: (STEPS, _expected_digest()), 1: (STEPS, _expected_digest())}
    assert (tmp_path / "requeues").read_text() == "requeue 42\n"  # finished: no requeue


def test_slurm_batch_script_needs_save(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), "--train-steps", "2"],
                          env=cpu_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "slurm.sbatch: --save DIR is required (a requeued job " \
                                  "resumes from it)"


def test_multinode_script_without_hostfile_exits_with_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "launch" / "multinode.sh"), "--train-steps", "2"],
                          env=cpu_env(HOSTFILE=str(tmp_path / "missing"), MASTER_ADDR="x"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"multinode.sh: HOSTFILE {tmp_path / 'missing'}: no such file"
