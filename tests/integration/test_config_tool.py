"""megaraptr-config: validate (training's checks and messages), explain (the stage table and
the ideal speedup of the cost model), sweep (a grid of configs that all pass validate)."""
from __future__ import annotations

from support import ROOT

from megaraptr.tools.config import main

CONFIGS = ROOT / "ds_configs"
# (model, size, pipeline stages) each shipped config is written for
SHIPPED = {"bert_base_full_zero2.json": ("bert", "base", 0),
           "bert_base_raptr_zero2.json": ("bert", "base", 0),
           "bert_large_raptr_zero2.json": ("bert", "medium", 0),
           "gpt_medium_raptr_zero1.json": ("gpt", "medium", 0),
           "gpt_1_3b_raptr_pipeline.json": ("gpt", "1.3b", 4),
           "gpt_mini_pipeline_cpu.json": ("gpt", "mini", 2),
           "ul2_1_6b_raptr_warmup.json": ("gpt", "1.6b", 0),
           "tiny_raptr_cpu.json": ("bert", "tiny", 0)}


def test_explain_profile_on_cpu(capsys, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert main(["explain", str(CONFIGS / "tiny_raptr_cpu.json"), "--size", "tiny",
                 "--profile", "--device", "cpu", "--profile-steps", "6"]) == 0  # 2: noise
    out = capsys.readouterr().out
    assert "profiled here: bert-tiny on cpu" in out and "16 x 128 tokens" in out
    whole = next(line for line in out.splitlines() if line.startswith("whole run  "))
    speedup = float(whole.split()[-1].rstrip("x"))
    assert 1.0 < speedup < 4 / 3 + 1e-9  # below the FLOPs ratio: the fixed cost does not shrink
