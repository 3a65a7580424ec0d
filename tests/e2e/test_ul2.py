"""Tests of UL2's mixture of denoisers (megaraptr.data.ul2): mixing proportions, span statistics,
exact reconstruction, labels, determinism, the S-denoiser's split, the UL2 tokens, bad input,
and one short ``megaraptr.tools.train --objective ul2`` run. Real data: the built-in sample.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from support import ROOT, run

from megaraptr.data.ul2 import Denoiser, UL2Collator, paper_mixture
from megaraptr.errors import ConfigError

SPAN_KINDS = ["R", "R", "X", "X", "X", "X"]


def windows(data, seq_len: int, count: int) -> list[np.ndarray]:
    """``count`` real causal windows (``seq_len + 1`` tokens) spread over the train stream."""
    last = data.num_train_tokens - seq_len - 1
    return [data.train_tokens.read((i * 7919) % last, seq_len + 1).astype(np.int64)
            for i in range(count)]


def test_bad_settings_are_config_errors(causal, capsys):
    with pytest.raises(ConfigError, match="--ul2-s-share"):
        paper_mixture(1.5)
    with pytest.raises(ConfigError, match="ul2.rate"):
        Denoiser("R", 0.0, 3)
    with pytest.raises(ConfigError, match="ul2.mean_span"):
        Denoiser("S", 0.25, 8)
    with pytest.raises(ConfigError, match="positive weight"):
        UL2Collator(causal.vocab_size, 64, [Denoiser("R", 0.15, 3, 0.0)])
    from megaraptr.tools.train import main

    config = str(ROOT / "ds_configs" / "tiny_raptr_cpu.json")
    for extra, message in [(["--model", "bert", "--objective", "ul2"], "--objective: ul2 "),
                           (["--model", "gpt", "--ul2-s-share", "0.5"], "--ul2-s-share: needs"),
                           (["--model", "gpt", "--objective", "ul2", "--ul2-s-share", "2"],
                            "--ul2-s-share: must be in [0, 1]")]:
        assert main(["--deepspeed_config", config, "--train-steps", "5", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"megaraptr-train: error: {message}"), err


def test_train_gpt_with_ul2_loss_falls(causal, tmp_path):
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config["tensorboard"]["enabled"] = False
    (tmp_path / "ds.json").write_text(json.dumps(config))
    summary = tmp_path / "summary.json"
    proc = run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config",
                tmp_path / "ds.json", "--model", "gpt", "--size", "tiny", "--objective", "ul2",
                "--data", causal.path, "--train-steps", "20", "--eval-interval", "10",
                "--eval-sequences", "16", "--summary", summary, "--save", tmp_path / "ckpt"],
               timeout=180)
    assert "objective ul2 (Tay et al. 2022): R 28.6%, X 57.1%, S 14.3%" in proc.stdout
    result = json.loads(summary.read_text())
    assert result["objective"] == "ul2" and result["steps"] == 20
    losses = [loss for _, loss in result["eval_history"]]
    assert losses[0] > losses[1] > losses[2] and losses[-1] < losses[0] - 0.5, losses
    # a UL2 checkpoint has UL2's vocabulary: resuming it as plain causal LM stops in one line
    refused = run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config",
                   tmp_path / "ds.json", "--model", "gpt", "--size", "tiny", "--data",
                   causal.path, "--train-steps", "20", "--load", tmp_path / "ckpt"],
                  timeout=120, check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"megaraptr-train: error: --objective: causal, but {tmp_path / 'ckpt' / 'step20'} was "
        "trained with --objective ul2 (another vocabulary); allowed: ul2"]
