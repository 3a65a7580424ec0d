"""Tests of megaraptr.data: tokenizers, preparing, caching, errors and the command line.

Real text only: the built-in sample and slices of the shared corpus. Small broken files are
written only for the malformed-input tests.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from support import CORPUS, ROOT

from megaraptr.data import SAMPLE_DIR, load_prepared, make_batches, prepare
from megaraptr.data.prepare import PREPARE_MEMORY_BYTES, doc_hash
from megaraptr.data.tokenizer import train_tokenizer

ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def sample_texts(n: int | None = None) -> list[str]:
    with gzip.open(SAMPLE_DIR / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in islice(f, n)]


def copy_lines(src: Path, dst: Path, start: int, count: int) -> None:
    with gzip.open(src, "rt", encoding="utf-8") as f, gzip.open(dst, "wt", encoding="utf-8") as g:
        g.writelines(islice(f, start, start + count))


def python(code: str, *args, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A corpus-style directory: 60 train, 20 val and 5 test segments of the shared corpus."""
    d = tmp_path_factory.mktemp("corpus")
    copy_lines(CORPUS / "train.jsonl.gz", d / "train.jsonl.gz", 0, 60)
    copy_lines(CORPUS / "val.jsonl.gz", d / "val.jsonl.gz", 0, 20)
    copy_lines(CORPUS / "test.jsonl.gz", d / "test.jsonl.gz", 0, 5)
    return d


# -- sample and tokenizers ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_tokenizer_training_is_deterministic(kind):
    texts = sample_texts(60)
    first = train_tokenizer(texts, kind, 4000).to_str()
    assert train_tokenizer(iter(texts), kind, 4000).to_str() == first
    # Another process (other hash seeds) must give the same file.
    code = """
        import gzip, json, sys
        from itertools import islice
        from megaraptr.data import SAMPLE_DIR
        from megaraptr.data.tokenizer import train_tokenizer
        with gzip.open(SAMPLE_DIR / "train.jsonl.gz", "rt", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in islice(f, 60)]
        sys.stdout.write(train_tokenizer(texts, sys.argv[1], 4000).to_str())
    """
    proc = python(code, kind)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == first


# -- prepared data -----------------------------------------------------------------------------


def test_corpus_directory_uses_its_val_file(corpus_dir, tmp_path):
    data = prepare(corpus_dir, tmp_path / "p", kind="causal", vocab_size=2000)
    assert (data.train_documents, data.val_documents) == (60, 20)
    assert data.index["inputs"] == {"train": [str(corpus_dir / "train.jsonl.gz")],
                                    "val": [str(corpus_dir / "val.jsonl.gz")]}
    assert data.vocab_size == 2000 and data.dtype == np.uint16
    # Explicit val inputs win over the directory's val file.
    other = prepare(corpus_dir, tmp_path / "q", kind="causal", vocab_size=2000,
                    val_inputs=[corpus_dir / "test.jsonl.gz"])
    assert (other.train_documents, other.val_documents) == (60, 5)


def test_hash_holdout_is_deterministic(corpus_dir, tmp_path):
    files = [corpus_dir / "train.jsonl.gz"]
    with gzip.open(files[0], "rt", encoding="utf-8") as f:
        hashes = sorted(doc_hash(json.loads(line)["text"]) for line in f)
    a = prepare(files, tmp_path / "a", kind="mlm", vocab_size=2000, val_fraction=0.2)
    expected_val = sum(h < int(0.2 * 2**64) for h in hashes)
    assert (a.train_documents, a.val_documents) == (60 - expected_val, expected_val)
    assert 3 <= expected_val <= 25
    # With 1% of 60 documents nothing falls below the cut: the smallest hash is held out.
    b = prepare(files, tmp_path / "b", kind="mlm", vocab_size=2000)
    assert (b.train_documents, b.val_documents) == (59, 1)
    c = prepare(files, tmp_path / "b", kind="mlm", vocab_size=2000)  # re-prepare in place
    assert c.fingerprint == b.fingerprint and np.array_equal(c.val_tokens[:], b.val_tokens[:])


# -- errors and command line -------------------------------------------------------------------


def test_prepare_cached_from_two_processes_prepares_once(tmp_path):
    code = """
        import sys, time
        from megaraptr.data import SAMPLE_DIR, cache
        original = cache.prepare_files
        def counted(*args, **kwargs):
            with open(sys.argv[2], "a") as log:
                log.write("prepared\\n")
            return original(*args, **kwargs)
        cache.prepare_files = counted
        while time.time() < float(sys.argv[3]):
            time.sleep(0.01)
        data = cache.prepare_cached([SAMPLE_DIR], kind="causal", vocab_size=3000,
                                    cache_dir=sys.argv[1])
        print(data.path, data.fingerprint, data.num_train_tokens)
    """
    log, start = tmp_path / "log", time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "c"),
                               str(log), str(start)], cwd=ROOT, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=90) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0] and outs[0][0].strip()
    assert log.read_text() == "prepared\n"
    entries = sorted(p.name for p in (tmp_path / "c" / "prepared").iterdir())
    assert len([e for e in entries if not e.endswith(".lock")]) == 1  # no temp dirs left


def test_a_40_mb_single_line_is_prepared_in_bounded_memory_and_trains(mlm, tmp_path):
    """A 40 MB .txt file of one line (real corpus text, repeated): streamed and tokenized in
    pieces, so preparing it adds less than PREPARE_MEMORY_BYTES to the process (it took ~5.6 GB
    when the line was read and tokenized whole); batches come out of the result."""
    with gzip.open(CORPUS / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        text = " ".join(" ".join(json.loads(line)["text"].split()) for line in islice(f, 400))
    big, size = tmp_path / "big.txt", 40_000_000
    with open(big, "w", encoding="utf-8") as f:
        for _ in range(size // (len(text) + 1)):
            f.write(text + " ")
        f.write(text[:size % (len(text) + 1)])
    assert big.stat().st_size >= size and b"\n" not in big.read_bytes()[:10_000_000]
    # The peak is the kernel's high-water mark of this process's memory (VmHWM: unlike
    # getrusage's ru_maxrss, it starts afresh at exec, not at the size of the forking pytest).
    code = """
        import re, sys
        from megaraptr.data import prepare
        def peak():
            with open("/proc/self/status") as f:
                return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024
        before = peak()
        data = prepare(sys.argv[1], sys.argv[2], kind="mlm", tokenizer_file=sys.argv[3])
        print(before, peak(), data.train_documents, data.val_documents)
    """
    proc = python(code, big, tmp_path / "out", mlm.path / "tokenizer.json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after, train_docs, val_docs = map(int, proc.stdout.split())
    print(f"peak RSS {before / 2**20:.0f} MiB before preparing, {after / 2**20:.0f} MiB after "
          f"(+{(after - before) / 2**20:.0f} MiB)")
    assert after - before < PREPARE_MEMORY_BYTES
    assert train_docs + val_docs >= size // (1 << 17) and val_docs >= 1
    data = load_prepared(tmp_path / "out")
    assert data.num_train_tokens > 5_000_000 and data.num_val_tokens > 1000
    batches = make_batches(data, seq_len=128, micro_batch_size=4, seed=1)
    step = batches.step_batches(1)
    assert step[0]["input_ids"].shape == (4, 128)
    assert int(step[0]["input_ids"].max()) < data.vocab_size
    assert len(batches.eval_batches(8, 4)) == 2
