"""``megaraptr.tools.train --pipeline-stages 2`` end to end on CPU (2 processes, tiny GPT).

- a run straight through equals ``--exit-at-step 4`` then ``--load`` (final eval loss, eval
  history, subnetwork digest, layer FLOPs): the plan moves a layer at step 6, so the resumed
  run re-partitions itself, through a checkpoint, after loading one;
- TensorBoard gets ``raptr/pipeline_imbalance`` and ``raptr/pipeline_busiest_layers`` every
  step, besides the usual tags;
- ZeRO-2 with a pipeline exits 2 with one line before anything is built.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support import ROOT, cpu_env, run, torchrun

STEPS = 16
COSTS = {"layer": 1.0, "embedding": 0.2, "head": 2.5}  # plan: [0,2,4] -> [0,3,4]


def write_config(path: Path, tensorboard: Path) -> Path:
    config = json.loads((ROOT / "ds_configs" / "gpt_mini_pipeline_cpu.json").read_text())
    config.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=4)
    config["tensorboard"]["output_path"] = str(tensorboard)
    config["raptr"].update(schedule="2-3-4", consistency_check_interval=1,
                           pipeline={"costs": COSTS})
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_pipe")
    config = write_config(tmp / "ds.json", tmp / "tb")
    env = cpu_env(MEGARAPTR_CACHE=tmp / "cache")
    common = ["-m", "megaraptr.train", "--deepspeed_config", str(config), "--model", "gpt",
              "--size", "tiny", "--seq-len", "32", "--train-steps", str(STEPS),
              "--eval-interval", "8", "--eval-sequences", "19", "--pipeline-stages", "2"]
    # 19 held-out sequences in micro-batches of 2: the last one is short (it is padded)
    straight = torchrun(2, common + ["--summary", str(tmp / "straight.json")], timeout=300,
                        env=env)
    torchrun(2, common + ["--exit-at-step", "4", "--save", str(tmp / "ckpt")], timeout=300,
             env=env)
    resumed = torchrun(2, common + ["--load", str(tmp / "ckpt"), "--save", str(tmp / "ckpt"),
                                    "--summary", str(tmp / "resumed.json")], timeout=300, env=env)
    return {"tmp": tmp, "straight": json.loads((tmp / "straight.json").read_text()),
            "resumed": json.loads((tmp / "resumed.json").read_text()),
            "logs": (straight.stdout, resumed.stdout), "ckpt": tmp / "ckpt"}


@pytest.mark.distributed
def test_resume_is_exact_across_repartitions(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert straight["pipeline"]["plan"] == [[0, 2, 4], [0, 3, 4], [0, 3, 4]]
    for log in runs["logs"]:
        assert "step 6: re-partitioned the pipeline [0, 2, 4] -> [0, 3, 4]" in log
    assert (runs["ckpt"] / "repartition-step5" / "raptr_optim_pp00.pt").is_file()
    assert resumed["steps"] == straight["steps"] == STEPS
    assert resumed["final_eval_loss"] == straight["final_eval_loss"]
    assert resumed["subnetwork_digest"] == straight["subnetwork_digest"]
    assert resumed["layer_flops_fraction"] == straight["layer_flops_fraction"]
    assert resumed["eval_history"] == straight["eval_history"]
    assert straight["final_eval_loss"] < straight["initial_eval_loss"] - 1.0


@pytest.mark.distributed
def test_tensorboard_has_pipeline_imbalance(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert runs["straight"]["objective"] == "causal"
    logdir = runs["tmp"] / "tb" / f"gpt-tiny-raptr-seed1234-{runs['straight']['run_id']}"
    assert runs["straight"]["tensorboard_dir"] == str(logdir)
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    imbalance = acc.Scalars("raptr/pipeline_imbalance")
    assert {e.step for e in imbalance} >= set(range(1, STEPS + 1))
    assert all(e.value >= 1.0 for e in imbalance)
    busiest = acc.Scalars("raptr/pipeline_busiest_layers")
    assert all(1 <= e.value <= 3 for e in busiest)


def test_pipeline_with_zero2_exits_2_with_one_line(tmp_path):
    config = write_config(tmp_path / "ds.json", tmp_path / "tb")
    data = json.loads(config.read_text())
    data["zero_optimization"] = {"stage": 2}
    config.write_text(json.dumps(data))
    proc = run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config", str(config),
                "--model", "gpt", "--size", "tiny", "--train-steps", "4",
                "--pipeline-stages", "2"], timeout=120, check=False, env=cpu_env())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["megaraptr-train: error: zero_optimization.stage: 2 with --pipeline-stages; "
                     "allowed: 0 or 1 (DeepSpeed pipelines support no ZeRO-2/3)"], proc.stderr
