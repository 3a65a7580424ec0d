"""megaraptr-config for any model: ``suggest`` (the schedule rule), ``--layers N`` (your own
model, megaraptr.initialize's checks), a FLOP estimate from ``--hidden``, and hf: models."""
from __future__ import annotations

import json

import pytest

from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.tools.config import main
from megaraptr.tools.config_suggest import suggest_depths


@pytest.mark.parametrize("layers, flops, depths", [
    (12, 0.75, [6, 8, 10, 12]), (24, 0.75, [12, 16, 20, 24]), (6, 0.75, [3, 4, 5, 6]),
    (48, 0.8, [29, 35, 42, 48]), (4, 0.75, [2, 3, 4]), (12, 1.0, [12])])
def test_the_rule_reaches_the_target_with_whole_depths(layers, flops, depths):
    assert suggest_depths(layers, flops) == depths
    config = parse_raptr_block({"enabled": True, "schedule": "-".join(map(str, depths))})
    spent = build_schedule(config, num_layers=layers, total_steps=1000).expected_flops_fraction()
    assert spent == pytest.approx(flops, abs=0.5 / layers)  # whole depths: within half a layer


@pytest.mark.parametrize("argv, message", [
    (["--layers", "6", "--flops", "0.3"], "--flops: 0.3; allowed: 0.6667 to 1 for 6 layers"),
    (["--layers", "1"], "--layers: 1; allowed: 2 or more"),
    (["--layers", "8", "--stages", "0"], "--stages: 0; allowed: 1 or more")])
def test_suggest_refuses_the_impossible_in_one_line(argv, message, capsys):
    assert main(["suggest"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"megaraptr-config: error: {message}") and err.count("\n") == 1


def test_suggest_prints_a_block_to_paste(capsys):
    assert main(["suggest", "--layers", "24"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("schedule: 12-16-20-24 (4 equal stages; keep probability 0.455")
    assert out[1] == "layer FLOPs: 0.7500 of full training (target 0.75)"
    assert json.loads("{" + out[2] + "}") == {"raptr": {"enabled": True,
                                                        "schedule": "12-16-20-24"}}


def _own(tmp_path, **scheduler):
    config = {"train_micro_batch_size_per_gpu": 8, "raptr": {"enabled": True, "schedule": "3-4-6"},
              "scheduler": {"type": "WarmupDecayLR", "params": dict(
                  {"warmup_num_steps": 30, "total_num_steps": 300}, **scheduler)}}
    path = tmp_path / "own.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_validate_and_explain_your_own_model(tmp_path, capsys):
    assert main(["validate", _own(tmp_path), "--layers", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "your model (6 layers), 300 steps" in out
    assert "raptr 3-4-6 in 3 stages" in out and "note:" not in out
    assert main(["explain", _own(tmp_path), "--layers", "6", "--hidden", "768", "--seq-len",
                 "512", "--vocab-size", "30522", "--mlm"]) == 0
    out = capsys.readouterr().out
    assert "FLOP-proportional estimate from the shape (hidden 768, ffn 3072" in out
    assert "ideal FLOP-bound speedup" in out


def test_own_model_problems_are_the_initialize_checks(tmp_path, capsys):
    assert main(["validate", _own(tmp_path), "--layers", "8"]) == 2  # "3-4-6" ends below 8
    assert "raptr.schedule[2]: the last stage must be the full model" in capsys.readouterr().err
    assert main(["validate", _own(tmp_path, warmup_num_steps=300), "--layers", "6"]) == 0
    assert "note: warning: scheduler.params.warmup_num_steps 300" in capsys.readouterr().out


def test_hf_models_are_accepted_as_training_accepts_them(capsys):
    pytest.importorskip("transformers")
    assert main(["validate", "ds_configs/tiny_raptr_cpu.json", "--model", "hf:gpt2", "--size",
                 "tiny", "--train-steps", "300"]) == 0
    assert "hf:gpt2-tiny (4 layers)" in capsys.readouterr().out
