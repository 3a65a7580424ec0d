"""The training entry point end to end on CPU: bad input, exact resume, launchers, TensorBoard.

The acceptance run: 2 processes, ZeRO-2, fp32, tiny BERT on the built-in sample;
``--train-steps 40`` straight through (under the deepspeed launcher, via launch/train.sh)
equals ``--exit-at-step 20`` then ``--load`` (under torchrun) in final eval loss and
subnetwork digest.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from support import ROOT, cpu_env, free_port, run, torchrun

TAGS = {"train/loss", "train/lr", "train/tokens_per_sec", "raptr/stage", "raptr/keep_prob",
        "raptr/active_layers", "raptr/layer_flops_fraction", "eval/loss"}


def write_config(path: Path, *, stage: int = 2, tensorboard: Path | None = None, **raptr) -> Path:
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config["zero_optimization"] = {"stage": stage}
    config["raptr"].update({"consistency_check_interval": 1}, **raptr)
    if tensorboard is not None:
        config["tensorboard"]["output_path"] = str(tensorboard)
    else:
        config["tensorboard"]["enabled"] = False
    path.write_text(json.dumps(config))
    return path


def train_cli(*args, **kwargs):
    return run([sys.executable, "-m", "megaraptr.train", *args], **kwargs)


# ------------------------------------------------------------------ bad input: exit 2, one line
@pytest.mark.parametrize("raptr, key", [
    ({"sampling": "random"}, "raptr.sampling:"),
    ({"colour": "red"}, "raptr.colour: unknown key"),
    ({"schedule": "2-3-9"}, "raptr.schedule[2].layers: 9 layers is above the model's 4"),
    ({"schedule": "4-3-4"}, "raptr.schedule[1]:"),
    ({"schedule": [{"keep_prob": 1.5}]}, "raptr.schedule[0].keep_prob:"),
    ({"fixed_layers": [0, 7]}, "raptr.fixed_layers[1]:"),
    ({"enabled": "yes"}, "raptr.enabled:"),
])
def test_malformed_raptr_block_exits_2_with_one_line(tmp_path, raptr, key):
    config = write_config(tmp_path / "bad.json", **raptr)
    proc = train_cli("--deepspeed_config", config, "--model", "bert", "--size", "tiny",
                     "--train-steps", "10", timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"megaraptr-train: error: {key}"), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("extra, message", [
    (["--data", "/nonexistent/corpus.jsonl"], "/nonexistent/corpus.jsonl"),
    (["--load", "/nonexistent/ckpt"], "--load /nonexistent/ckpt: no such directory"),
    (["--exit-at-step", "5"], "--exit-at-step: needs --save"),
])
def test_bad_paths_and_flags_exit_2_with_one_line(tmp_path, extra, message):
    config = write_config(tmp_path / "ok.json")
    proc = train_cli("--deepspeed_config", config, "--train-steps", "10", *extra,
                     timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr


def test_unreadable_config_exits_2(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 4,,}')
    proc = train_cli("--deepspeed_config", bad, "--train-steps", "5", timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("megaraptr-train: error: deepspeed_config: ")
    assert "line 1 column" in proc.stderr


# ------------------------------------------------------------------ the acceptance run
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """40 steps straight (deepspeed launcher), and 20 + resume to 40 (torchrun)."""
    tmp = tmp_path_factory.mktemp("runs")
    config = write_config(tmp / "z2.json", tensorboard=tmp / "tb")
    common = ["--deepspeed_config", config, "--model", "bert", "--size", "tiny",
              "--train-steps", "40", "--eval-interval", "10", "--eval-sequences", "38"]
    # 38 held-out sequences: 19 per rank in micro-batches of 4, the last one short
    env = cpu_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                  NGPU=2, MODEL="bert", SIZE="tiny", DS_CONFIG=config, MASTER_PORT=free_port())
    run(["bash", ROOT / "launch" / "train.sh", "--train-steps", "40", "--eval-interval", "10",
         "--eval-sequences", "38", "--summary", tmp / "straight.json"], env=env, timeout=300)
    args = ["-m", "megaraptr.train"] + common + ["--save", tmp / "ckpt"]
    torchrun(2, args + ["--exit-at-step", "20", "--summary", tmp / "first.json"], timeout=300)
    torchrun(2, args + ["--load", tmp / "ckpt", "--summary", tmp / "resumed.json"], timeout=300)
    read = lambda name: json.loads((tmp / f"{name}.json").read_text())  # noqa: E731
    return {"tmp": tmp, "config": config, "straight": read("straight"), "first": read("first"),
            "resumed": read("resumed")}


def test_resume_equals_uninterrupted_run(runs):
    straight, first, resumed = runs["straight"], runs["first"], runs["resumed"]
    assert first["steps"] == 20 and not first["finished"]
    assert straight["steps"] == resumed["steps"] == 40
    # CPU fp32, same data order, same subnetworks: the losses are equal to the last bit
    assert resumed["final_eval_loss"] == straight["final_eval_loss"]
    assert resumed["subnetwork_digest"] == straight["subnetwork_digest"]
    assert resumed["eval_history"] == straight["eval_history"]
    assert resumed["layer_flops_fraction"] == straight["layer_flops_fraction"]
    assert first["subnetwork_digest"] != straight["subnetwork_digest"]
    # each run its own TensorBoard folder (its run id); the resumed session writes on in its run's
    assert resumed["run_id"] == first["run_id"] != straight["run_id"]
    assert resumed["tensorboard_dir"] == first["tensorboard_dir"] != straight["tensorboard_dir"]


def test_summary_reports_the_run(runs):
    summary = runs["straight"]
    for key in ("steps", "final_eval_loss", "wall_seconds", "tokens_per_second",
                "layer_flops_fraction", "subnetwork_digest"):
        assert key in summary, key
    assert summary["world_size"] == 2 and summary["objective"] == "mlm"
    data = summary["data"]  # what the data summary line said
    assert data["tokenizer"] == "wordpiece" and data["vocab_size"] == 8192
    assert data["sequences_per_step"] * data["seq_len"] * 40 == summary["tokens"]
    assert data["passes"] == pytest.approx(40 * data["sequences_per_step"] /
                                           data["train_sequences"])
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 1.0
    assert 0.5 < summary["layer_flops_fraction"] < 1.0
    assert summary["layer_flops_fraction"] == pytest.approx(
        summary["expected_layer_flops_fraction"], abs=0.1)


def test_tensorboard_has_every_tag_each_step(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(runs["straight"]["tensorboard_dir"])
    assert logdir.parent == runs["tmp"] / "tb"
    assert re.fullmatch(r"bert-tiny-raptr-seed1234-\d{8}-\d{6}", logdir.name), logdir.name
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert TAGS <= tags, TAGS - tags
    steps = [e.step for e in acc.Scalars("raptr/active_layers")]
    assert sorted(set(steps)) == list(range(1, 41))
    evals = [e.step for e in acc.Scalars("eval/loss")]
    assert {0, 10, 20, 30, 40} <= set(evals)


def test_resume_under_another_schedule_is_refused_unless_overridden(runs):
    tmp = runs["tmp"]
    common = ["--deepspeed_config", runs["config"], "--model", "bert", "--size", "tiny",
              "--load", tmp / "ckpt", "--summary", tmp / "override.json"]
    refused = train_cli(*common, "--train-steps", "50", timeout=120, check=False)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "was trained with" in refused.stderr and "--override-raptr-schedule" in refused.stderr
    torchrun(2, ["-m", "megaraptr.train", *common, "--train-steps", "50",
                 "--override-raptr-schedule"], timeout=300)
    override = json.loads((tmp / "override.json").read_text())
    assert override["steps"] == 50 and override["finished"]


def test_disabled_raptr_trains_the_full_model_through_the_same_path(tmp_path):
    config = write_config(tmp_path / "full.json", stage=1, enabled=False)
    train_cli("--deepspeed_config", config, "--model", "gpt", "--size", "tiny",
              "--train-steps", "6", "--summary", tmp_path / "s.json", timeout=180,
              env=cpu_env())
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["layer_flops_fraction"] == 1.0
    assert summary["raptr_enabled"] is False
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
