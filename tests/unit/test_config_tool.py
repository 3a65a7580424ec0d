"""megaraptr-config: validate (training's checks and messages), explain (the stage table and
the ideal speedup of the cost model), sweep (a grid of configs that all pass validate)."""
from __future__ import annotations

import csv
import json

import pytest
from support import ROOT

from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, split_ds_config
from megaraptr.planning.step_costs import (REFERENCE, StepCosts, ideal_speedup, parse_costs,
                                           stage_rows)
from megaraptr.tools.config import main
from megaraptr.tools.config_check import check

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


def test_every_shipped_config_is_listed_and_validates():
    assert set(SHIPPED) == {p.name for p in CONFIGS.glob("*.json")}
    for name, (model, size, stages) in SHIPPED.items():
        checked = check(str(CONFIGS / name), model=model, size=size, pipeline_stages=stages)
        assert checked.schedule.stages[-1].is_full, name


def test_validate_ok(capsys):
    assert main(["validate", str(CONFIGS / "bert_base_raptr_zero2.json"), "--size", "base"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("ok: ") and "\n" not in out
    assert "bert-base (12 layers), 1,000,000 steps" in out and "layer FLOPs 0.750" in out


def test_validate_passes_training_flags_through(tmp_path, capsys):
    path = _config(tmp_path)
    assert main(["validate", path, "--size", "base", "--exit-at-step", "5"]) == 2
    assert "--exit-at-step: needs --save DIR" in capsys.readouterr().err


def test_validate_names_the_missing_size_and_steps(tmp_path, capsys):
    assert main(["validate", str(CONFIGS / "bert_base_raptr_zero2.json")]) == 2
    assert "--size: required; the schedule ends at 12 layers: narrow or small or slim or base" in \
        capsys.readouterr().err
    config = json.loads((CONFIGS / "tiny_raptr_cpu.json").read_text())
    del config["scheduler"]
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["validate", str(tmp_path / "c.json"), "--size", "tiny"]) == 2
    assert "--train-steps: required" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "c.json"), "--size", "tiny",
                 "--train-steps", "40"]) == 0


def test_stage_rows_by_hand():
    raptr, _ = split_ds_config({"raptr": {"enabled": True, "schedule": "6-8-10-12"}})
    schedule = build_schedule(raptr, num_layers=12, total_steps=1000)
    rows = stage_rows(schedule, StepCosts(fixed=10.0, per_layer=5.0, source="test"))
    assert [r["keep_prob"] for r in rows[:4]] == ["0.4", "0.6", "0.8", "1"]
    assert [r["expected_layers"] for r in rows] == pytest.approx([6, 8, 10, 12, 9])
    assert [r["layer_flops"] for r in rows] == pytest.approx([0.5, 2 / 3, 5 / 6, 1, 0.75])
    # t(k) = 10 + 5k: t(12) = 70; the mean step runs 9 layers: 70 / 55
    assert [r["ideal_speedup"] for r in rows] == pytest.approx([70 / 40, 70 / 50, 70 / 60, 1,
                                                                70 / 55])
    assert rows[-1]["steps"] == "1-1000" and rows[0]["steps"] == "1-250"


def test_whole_run_matches_flops_fraction_with_warmup_and_pld():
    for block in ({"enabled": True, "schedule": "12-16-20-24", "full_model_warmup_steps": 30},
                  {"enabled": True, "method": "pld"}):
        raptr, _ = split_ds_config({"raptr": block})
        schedule = build_schedule(raptr, num_layers=24, total_steps=400)
        whole = stage_rows(schedule, None)[-1]
        assert whole["layer_flops"] == pytest.approx(schedule.expected_flops_fraction())
    assert "->" in stage_rows(schedule, None)[0]["keep_prob"]  # PLD's theta decays


def test_reference_costs_give_docs_speedup():
    """docs/gpu/step_costs-h200-2026-11-27.json (BERT-base, masked head, 8.01 + 4.78 k ms):
    6-8-10-12 with equal stages is (8.01 + 4.78 x 12) / (8.01 + 4.78 x 9) = 1.28x."""
    raptr, _ = split_ds_config({"raptr": {"enabled": True, "schedule": "6-8-10-12"}})
    schedule = build_schedule(raptr, num_layers=12, total_steps=1000)
    assert round(ideal_speedup(schedule, REFERENCE[("bert", "base")]), 2) == 1.28


def test_parse_costs():
    assert parse_costs("fixed=6,layer=5.05") == StepCosts(6.0, 5.05, "given (--costs)")
    for bad in ("layer=5", "layer=x,fixed=1", "layer=0,fixed=1", "layer=1,fixed=1,head=2"):
        with pytest.raises(ConfigError, match="--costs"):
            parse_costs(bad)


def test_explain_table_and_speedup(tmp_path, capsys):
    path = _config(tmp_path)
    assert main(["explain", path, "--size", "base", "--costs", "layer=5,fixed=10"]) == 0
    out = capsys.readouterr().out
    assert "costs: t(k) = 10 ms + 5 ms x k active layers; given (--costs)" in out
    assert "whole run: layer FLOPs 0.750 of full training (1.333x fewer); ideal wall-clock " \
           "speedup 1.273x" in out
    stage1 = next(line for line in out.splitlines() if line.startswith("stage1"))
    assert stage1.split() == ["stage1", "1-250", "0.4", "6.00", "0.500", "40.0", "1.750x"]
    assert main(["explain", path, "--size", "base"]) == 0  # default: the H200 reference
    assert "reference: BERT-base shape" in capsys.readouterr().out
    assert main(["explain", path, "--size", "narrow"]) == 0  # no reference: FLOPs only
    out = capsys.readouterr().out
    assert "costs: none known for bert-narrow" in out and "ideal speedup" not in out


def test_explain_pipeline_partitions(capsys):
    assert main(["explain", str(CONFIGS / "gpt_mini_pipeline_cpu.json"), "--model", "gpt",
                 "--size", "mini", "--pipeline-stages", "2", "--costs", "layer=2,fixed=1"]) == 0
    out = capsys.readouterr().out
    assert "pipeline: 2 stages, balanced sampling" in out
    assert "stage3: partition [0, 4, 8], predicted imbalance 1.000" in out


def test_sweep_writes_valid_configs_and_an_index(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(CONFIGS / "tiny_raptr_cpu.json"), "--size", "tiny",
                 "--schedules", "2-3-4,3-4", "--lengths", "equal,0.4", "--warmup", "0,0.1",
                 "--train-steps", "100,200", "--baseline", "--costs", "layer=5,fixed=10",
                 "--out", str(out)]) == 0
    assert "wrote 18 configs" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert len(index["points"]) == len(rows) == 18 == len(list(out.glob("*.json"))) - 1
    for point in index["points"]:
        checked = check(point["file"], model="bert", size="tiny")  # steps from the config
        assert checked.args.train_steps == point["train_steps"]
        fraction = checked.schedule.expected_flops_fraction()
        assert point["layer_flops_fraction"] == round(fraction, 4)
        mean = 10 + 5 * 4 * fraction
        assert point["ideal_speedup"] == pytest.approx(30 / mean, abs=1e-4)
        config = json.loads(open(point["file"]).read())
        assert config["tensorboard"]["job_name"] == point["name"]
    point = next(p for p in index["points"] if p["name"] == "s2-3-4_last0.4_wu0.1_n200")
    assert point["full_model_warmup_steps"] == 20
    assert point["stages"] == "warmup:1-20 stage1:21-74 stage2:75-128 stage3:129-200"
    assert "megaraptr-train --deepspeed_config" in point["command"]
    assert next(p for p in index["points"] if p["name"] == "full_n100")["ideal_speedup"] == 1


def test_library_sizes_have_their_parameter_counts():
    """The arithmetic in megaraptr.models.SIZES, on the meta device (nothing allocated)."""
    import torch

    from megaraptr.models import build_model

    for size, vocab, total in (("1.3b", 50304, 1_313_722_368), ("1.6b", 32768, 1_607_404_032)):
        with torch.device("meta"):
            model = build_model("gpt", size, vocab_size=vocab, seq_len=1024)
        assert sum(p.numel() for p in model.parameters()) == total
