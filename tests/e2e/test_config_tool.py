"""megaraptr-config: validate (training's checks and messages), explain (the stage table and
the ideal speedup of the cost model), sweep (a grid of configs that all pass validate)."""
from __future__ import annotations

import json
import sys

from support import ROOT, run

CONFIGS = ROOT / "ds_configs"
# (model, size, pipeline stages) each shipped config is written for
SHIPPED = {"bert_base_full_zero2.json": ("bert", "base", 0),
           "bert_base_raptr_zero2.json": ("bert", "base", 0),
           "bert_large_raptr_zero2.json": ("bert", "medium", 0),
           "gpt_medium_raptr_zero1.json": ("gpt", "medium", 0),
           "gpt_1_3b_raptr_pipeline.json": ("gpt", "1.3b", 4),
           "gpt_1_3b_raptr_tp8.json": ("gpt", "1.3b", 0),
           "gpt_1_3b_raptr_tp8_pipeline.json": ("gpt", "1.3b", 4),
           "tiny_raptr_tp2_cpu.json": ("bert", "tiny", 0),
           "gpt_mini_pipeline_cpu.json": ("gpt", "mini", 2),
           "ul2_1_6b_raptr_warmup.json": ("gpt", "1.6b", 0),
           "tiny_raptr_cpu.json": ("bert", "tiny", 0)}


def _config(tmp_path, schedule="6-8-10-12", steps=1000, **raptr) -> str:
    config = json.loads((CONFIGS / "bert_base_raptr_zero2.json").read_text())
    config["raptr"].update(schedule=schedule, **raptr)
    config["scheduler"]["params"]["total_num_steps"] = steps
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


def _tool(*args):
    return run([sys.executable, "-m", "megaraptr.tools.config", *args], timeout=120, check=False)


def test_validate_bad_config_gives_the_training_error(tmp_path):
    path = _config(tmp_path, schedule="6-8-10-14")
    tool = _tool("validate", path, "--size", "base")
    train = run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config", path,
                 "--size", "base", "--train-steps", "1000"], timeout=120, check=False)
    assert tool.returncode == train.returncode == 2
    assert tool.stdout == "" and len(tool.stderr.strip().splitlines()) == 1
    message = tool.stderr.strip().removeprefix("megaraptr-config: error: ")
    assert message.startswith("raptr.schedule[3].layers: 14 layers is above the model's 12")
    assert train.stderr.strip().splitlines()[-1] == f"megaraptr-train: error: {message}"


def test_sweep_reports_a_bad_point_and_leaves_no_file(tmp_path):
    out = tmp_path / "sweep"
    proc = _tool("sweep", str(CONFIGS / "tiny_raptr_cpu.json"), "--size", "tiny",
                 "--schedules", "2-3-4,2-3-5", "--out", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "sweep point s2-3-5_eq_wu0_n300: raptr.schedule[2].layers: 5 layers is above " \
           "the model's 4" in proc.stderr
    assert not (out / "s2-3-5_eq_wu0_n300.json").exists()
