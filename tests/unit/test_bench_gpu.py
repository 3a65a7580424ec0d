"""The one-command GPU benchmark (megaraptr.bench.gpu) on CPU: its dry run end to end, its
time budget, and the carried data (a corpus slice, read without the tokenizers package).

Timings on a shared CPU say nothing; only the shape of the results is checked.
"""
from __future__ import annotations

import gzip
import json

from megaraptr.bench.gpu_data import write_slice


def test_corpus_slice_is_deterministic_and_spans_the_corpus(tmp_path):
    train = tmp_path / "train.jsonl.gz"
    with gzip.open(train, "wt") as f:
        for i in range(400):
            f.write(json.dumps({"id": f"src{i % 4}/doc{i}", "text": "word " * 50}) + "\n")
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    info = write_slice(train, first, megabytes=0.025)  # a quarter of the 0.1 MB
    write_slice(train, second, megabytes=0.025)
    assert first.read_text() == second.read_text()
    assert 60 <= info["documents"] <= 140 and info["fraction"] == 0.25


READ_WITHOUT_TOKENIZERS = r"""
import sys
sys.modules["tokenizers"] = None  # import tokenizers now fails, as on the GPU machine
from megaraptr.data import make_batches, resolve_data
data = resolve_data(sys.argv[1], kind="mlm")
batch = make_batches(data, seq_len=32, micro_batch_size=2).step_batches(1)[0]
print("read", tuple(batch["input_ids"].shape))
"""
