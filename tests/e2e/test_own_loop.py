"""examples/own_loop.py, the README's own-loop example: run as a user runs it, on their own
text, under torchrun with 2 processes; its TensorBoard scalars are the training command's."""
from __future__ import annotations

import gzip
import json
import sys

from support import CORPUS, ROOT, cpu_env, free_port, run

EXAMPLE = ROOT / "examples" / "own_loop.py"


def test_the_readme_shows_the_example_file_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert "<!-- file: own_loop.py -->\n```python\n" + EXAMPLE.read_text() + "```\n" in readme


def test_own_text_on_two_processes_with_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with gzip.open(CORPUS / "val.jsonl.gz", "rt") as f:  # a user's own text: plain .txt files
        texts = [json.loads(line)["text"] for _, line in zip(range(60), f)]
    (tmp_path / "a.txt").write_text("\n\n".join(texts[:40]))
    (tmp_path / "b.txt").write_text("\n\n".join(texts[40:]))
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), EXAMPLE,
                "a.txt", "b.txt"], timeout=900, env=cpu_env(), cwd=tmp_path)
    finals = [line for line in proc.stdout.splitlines() if "(full model)" in line]
    assert len(finals) == 2 and "layer FLOPs" in finals[0]
    acc = EventAccumulator(str(tmp_path / "runs" / "own_loop"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_sec", "raptr/stage", "raptr/keep_prob",
            "raptr/active_layers", "raptr/layer_flops_fraction", "eval/loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 31))
    evals = acc.Scalars("eval/loss")
    assert [e.step for e in evals] == [0, 30] and evals[1].value < evals[0].value
