"""A run as a batch job sees it (stdout and stderr files, no terminal): a plain line per step
at this length with its ETA, a line per evaluation, the data summary line, none of DeepSpeed's
known-harmless warnings and no progress bar; a resumed session keeps its run's TensorBoard
folder (tests/e2e/test_train.py checks that under torchrun)."""
from __future__ import annotations

import json
import re
import sys

from support import ROOT, cpu_env, run


def test_a_batch_job_log_has_plain_lines_evals_and_the_data_summary(tmp_path):
    env = cpu_env(MEGARAPTR_CACHE=tmp_path / "cache")
    config = json.loads((ROOT / "ds_configs" / "tiny_raptr_cpu.json").read_text())
    config["tensorboard"]["output_path"] = str(tmp_path / "tb")
    (tmp_path / "ds.json").write_text(json.dumps(config))
    proc = run([sys.executable, "-m", "megaraptr.train", "--deepspeed_config",
                tmp_path / "ds.json", "--model", "gpt", "--size", "tiny", "--seq-len", "32",
                "--train-steps", "12", "--eval-interval", "5", "--eval-sequences", "8",
                "--summary", tmp_path / "s.json"], env=env, timeout=300)
    out, summary = proc.stdout, json.loads((tmp_path / "s.json").read_text())
    steps = re.findall(r"^megaraptr: step (\d+)/12: loss [\d.]+, lr \S+, \d layers, [\d,]+ "
                       r"tokens/s, ETA \d+:\d\d:\d\d$", out, re.M)
    assert steps == [str(i) for i in range(1, 13)], out  # 12 steps: every step (interval 1)
    evals = re.findall(r"^megaraptr: step (\d+): eval loss ([\d.]+)$", out, re.M)
    assert [(int(s), float(v)) for s, v in evals] == \
        [(s, round(v, 4)) for s, v in summary["eval_history"] if s in (5, 10)]
    data = summary["data"]
    assert (f"data summary: cache {data['cache']}; tokenizer bpe ({data['vocab_size']:,} ids); "
            f"tokens: train {data['train_tokens']:,}, val {data['val_tokens']:,}; "
            f"{data['train_sequences']:,} train sequences of 32; 12 steps x "
            f"{data['sequences_per_step']} sequences = {data['passes']:.2f} passes") in out
    assert data["cache"].startswith(str(tmp_path / "cache")) and summary["objective"] == "causal"
    assert "known-harmless DeepSpeed warnings are hidden" in out
    # the config's warmup is longer than 12 steps: DeepSpeed's own two warnings stay hidden,
    # megaraptr's note says it once
    assert "Attempting to get learning rate" not in proc.stderr + out
    assert "is less than warmup_num_steps" not in proc.stderr + out
    assert "warms up for the whole run" in out
    assert "\r" not in proc.stderr and "train:" not in proc.stderr  # no progress bar in a file
    assert re.fullmatch(str(tmp_path / "tb" / r"gpt-tiny-raptr-seed1234-\d{8}-\d{6}"),
                        summary["tensorboard_dir"])
