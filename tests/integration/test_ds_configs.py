"""Every shipped DeepSpeed config loads through deepspeed.initialize, raptr block and all."""
from __future__ import annotations

import json
import sys

import pytest
from support import ROOT, WORKERS, run

CONFIGS = sorted(p.name for p in (ROOT / "ds_configs").glob("*.json"))
REQUIRED = {"bert_base_raptr_zero2.json", "bert_base_full_zero2.json",
            "bert_large_raptr_zero2.json", "gpt_medium_raptr_zero1.json",
            "gpt_1_3b_raptr_pipeline.json", "ul2_1_6b_raptr_warmup.json", "tiny_raptr_cpu.json"}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    out = tmp_path_factory.mktemp("configs") / "loaded.json"
    # cwd: the configs log TensorBoard to a relative runs/ folder, kept out of the checkout
    run([sys.executable, WORKERS / "ds_config_worker.py", out], timeout=600,
        cwd=out.parent)
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_config_initializes(loaded, name):
    result = loaded[name]
    config = json.loads((ROOT / "ds_configs" / name).read_text())
    stage = config.get("zero_optimization", {}).get("stage", 0)
    assert result["plain_zero_stage"] == result["zero_stage"] == stage
    assert result["bf16"] == config.get("bf16", {}).get("enabled", False)
    assert result["basic_optimizer"] == "AdamW"
    assert result["groups_tagged"]
    # one process loads a tensor-parallel file as its T = 1 stand-in (ds_config_worker.py)
    assert result["tensor_parallel"] == config.get("tensor_parallel", {}).get("autotp_size", 1)
    assert result["raptr_enabled"] == config["raptr"]["enabled"]
    stages = result["stages"]
    assert stages[-1]["keep_prob"] == 1.0
    if config["raptr"]["enabled"]:
        warmup = config["raptr"].get("full_model_warmup_steps", 0)
        if warmup:
            assert stages[0]["stage"] == "warmup" and stages[0]["steps"] == f"1-{warmup}"
            stages = stages[1:]
        depths = [float(d) for d in config["raptr"]["schedule"].split("-")]
        assert [s["expected_layers"] for s in stages] == depths
        assert depths[-1] == result["num_layers"]
