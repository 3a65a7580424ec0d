"""Shared by the per-method tests: train a tiny model with a method, and resume it exactly.

``train_and_resume(tmp, block)`` runs ``megaraptr.tools.train`` (one process, ZeRO-2, fp32, tiny GPT
on the built-in sample) for STEPS steps straight through, and again as STEPS/2 steps, exit,
``--load``, the rest; it returns both summaries.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from support import ROOT, run

STEPS = 16


def write_config(path: Path, block: dict, *, stage: int = 2) -> Path:
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config["zero_optimization"] = {"stage": stage}
    config["tensorboard"]["enabled"] = False
    config["scheduler"]["params"].update(warmup_num_steps=2, total_num_steps=STEPS)
    config["raptr"] = dict(block, consistency_check_interval=1)
    path.write_text(json.dumps(config))
    return path


def train(tmp: Path, config: Path, name: str, *extra) -> dict:
    summary = tmp / f"{name}.json"
    run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config", config, "--model", "gpt",
         "--size", "tiny", "--seq-len", "64", "--train-steps", STEPS, "--eval-interval", "4",
         "--eval-sequences", "16", "--summary", summary, *extra], timeout=240)
    return json.loads(summary.read_text())


def train_and_resume(tmp: Path, block: dict, *, stage: int = 2, exit_at: int = STEPS // 2) -> dict:
    config = write_config(tmp / "config.json", block, stage=stage)
    straight = train(tmp, config, "straight")
    ckpt = tmp / "ckpt"
    first = train(tmp, config, "first", "--save", ckpt, "--exit-at-step", exit_at)
    resumed = train(tmp, config, "resumed", "--save", ckpt, "--load", ckpt)
    return {"straight": straight, "first": first, "resumed": resumed}


def assert_exact_resume(runs: dict, exit_at: int = STEPS // 2) -> None:
    straight, first, resumed = runs["straight"], runs["first"], runs["resumed"]
    assert first["steps"] == exit_at and not first["finished"]
    assert straight["steps"] == resumed["steps"] == STEPS
    assert resumed["final_eval_loss"] == straight["final_eval_loss"]
    assert resumed["eval_history"] == straight["eval_history"]
    assert resumed["subnetwork_digest"] == straight["subnetwork_digest"]
    assert resumed["layer_flops_fraction"] == straight["layer_flops_fraction"]
