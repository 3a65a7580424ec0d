"""Tests of megaraptr.models.hf: transformers' BERT, GPT-2 and Llama under RAPTR.

For each model: the all-active mask gives exactly the unadapted model; a skipped layer runs
no submodule and the output equals the model with that layer removed; eval runs every layer;
residual scaling equals scaling the branch projections; state_dict keys do not change. Then
the entry point: bad input exits 2 in one line, and 2-process ZeRO-2 runs train. Built from
small configs only (HF_HUB_OFFLINE=1): nothing is downloaded.
"""
from __future__ import annotations

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")

from support import ROOT, cpu_env, torchrun  # noqa: E402

from megaraptr.core.mask import LayerMask  # noqa: E402

NAMES = ("bert", "gpt2", "llama")
VOCAB, SEQ = 97, 16


def mask(active, scale=None) -> LayerMask:
    return LayerMask(tuple(active), tuple(scale or [1.0] * len(active)))


# ------------------------------------------------------------------ the adapter, per model


# ------------------------------------------------------------------ labels and losses


# ------------------------------------------------------------------ other models, errors


@pytest.mark.parametrize("extra, message", [
    (["--model", "hf:bort"], "--model: 'hf:bort': not hf:bert, hf:gpt2, hf:llama"),
    (["--model", "gpt3"], "--model: 'gpt3'; allowed: bert, gpt, hf:bert"),
    (["--model", "hf:gpt2", "--pipeline-stages", "2"], "--pipeline-stages: not supported with "
                                                       "Hugging Face models"),
    (["--model", "hf:llama", "--activation-checkpointing", "deepspeed"],
     '--activation-checkpointing: "deepspeed" is not supported'),
])
def test_bad_model_flags_exit_2_with_one_line(capsys, extra, message):
    from megaraptr.tools.train import main

    code = main(["--deepspeed_config", str(ROOT / "ds_configs" / "tiny_raptr_cpu.json"),
                 "--train-steps", "10", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"megaraptr-train: error: {message}"), err


# ------------------------------------------------------------------ 2 processes, ZeRO-2
@pytest.mark.distributed
@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_zero2_run_trains_with_raptr(tmp_path, name):
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config.update(train_micro_batch_size_per_gpu=8, zero_optimization={"stage": 2})
    config["scheduler"]["params"].update(warmup_num_steps=3)
    config["tensorboard"]["enabled"] = False
    config["raptr"]["consistency_check_interval"] = 1
    (tmp_path / "z2.json").write_text(json.dumps(config))
    torchrun(2, ["-m", "megaraptr.train", "--deepspeed_config", tmp_path / "z2.json",
                 "--model", f"hf:{name}", "--size", "tiny", "--seq-len", "64",
                 "--vocab-size", "2048", "--train-steps", "12", "--eval-sequences", "16",
                 "--summary", tmp_path / "summary.json"], timeout=240, env=cpu_env())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["world_size"] == 2, summary
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.2, summary
    assert 0.5 < summary["layer_flops_fraction"] < 1.0  # layers were skipped
    assert summary["model"] == f"hf:{name}"
