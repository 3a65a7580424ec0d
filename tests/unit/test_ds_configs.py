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


def test_required_configs_ship():
    assert REQUIRED <= set(CONFIGS)


def test_full_config_differs_from_raptr_config_only_by_enabled():
    raptr = json.loads((ROOT / "ds_configs" / "bert_base_raptr_zero2.json").read_text())
    full = json.loads((ROOT / "ds_configs" / "bert_base_full_zero2.json").read_text())
    assert raptr["raptr"]["enabled"] is True and full["raptr"]["enabled"] is False
    full["raptr"]["enabled"] = True
    assert full == raptr
