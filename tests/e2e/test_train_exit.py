"""Finished 2-process runs exit 0: no abort at interpreter exit.

A finished run used to die now and then after its last line with SIGABRT ("terminate called
without an active exception"): a process group left as garbage by the run's DeepSpeed engines
(reference cycles) was freed by a daemon thread's garbage collection (tqdm's monitor,
TensorBoard's writer) while the interpreter finalized. The cause is reproduced and its fix
proved deterministically in tests/integration/test_exit.py; these runs check the command as a
user runs it, with TensorBoard on (its writer threads on rank 0) and, for the pipeline, a
re-partition (an engine discarded mid-run). ``pytest -m slow`` runs the 20-run ZeRO-2 check.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import ROOT, cpu_env, torchrun

COSTS = {"layer": 1.0, "embedding": 0.2, "head": 2.5}  # plan: [0,2,4] -> [0,3,4] at step 2


def config(path: Path, tmp: Path, *, pipeline: bool) -> Path:
    name = "gpt_mini_pipeline_cpu.json" if pipeline else "tiny_raptr_cpu.json"
    data = json.loads((ROOT / "ds_configs" / name).read_text())
    data.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=2)
    data["tensorboard"]["output_path"] = str(tmp / "tb")
    data["raptr"].update(schedule="2-3-4", consistency_check_interval=1)
    if pipeline:
        data["raptr"]["pipeline"] = {"costs": COSTS}
    else:
        data["zero_optimization"] = {"stage": 2}
    path.write_text(json.dumps(data))
    return path


def finished_runs(tmp: Path, count: int, *, pipeline: bool) -> None:
    """``count`` finished runs of the tiny GPT on 2 processes; each must exit 0."""
    ds_config = config(tmp / "ds.json", tmp, pipeline=pipeline)
    args = ["-m", "megaraptr.train", "--deepspeed_config", ds_config, "--model", "gpt",
            "--size", "tiny", "--seq-len", "32", "--train-steps", "4", "--eval-sequences", "8"]
    args += ["--pipeline-stages", "2"] if pipeline else []
    env = cpu_env(MEGARAPTR_CACHE=tmp / "cache")
    for attempt in range(count):
        summary = tmp / f"summary{attempt}.json"
        proc = torchrun(2, args + ["--summary", summary], timeout=300, env=env)  # fails on rc != 0
        assert "terminate called" not in proc.stderr, proc.stderr[-2000:]
        assert json.loads(summary.read_text())["finished"], attempt


@pytest.mark.distributed
def test_pipeline_runs_exit_cleanly(tmp_path):
    finished_runs(tmp_path, 5, pipeline=True)


@pytest.mark.slow
@pytest.mark.distributed
def test_zero2_runs_exit_cleanly(tmp_path):
    finished_runs(tmp_path, 20, pipeline=False)
