"""Tests of megaraptr.data: tokenizers, preparing, caching, errors and the command line.

Real text only: the built-in sample and slices of the shared corpus. Small broken files are
written only for the malformed-input tests.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import Counter
from itertools import islice

import numpy as np
import pytest
from support import CORPUS

from megaraptr.data import SAMPLE_DIR, load_prepared, prepare, resolve_data
from megaraptr.data.shards import ShardedTokens, ShardWriter, token_dtype
from megaraptr.errors import DataError

ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


# -- sample and tokenizers ---------------------------------------------------------------------

def test_sample_files_are_small_and_public_domain():
    gz = sum((SAMPLE_DIR / f"{s}.jsonl.gz").stat().st_size for s in ("train", "val"))
    assert gz < 1_500_000
    sources, raw = Counter(), 0
    for split in ("train", "val"):
        with gzip.open(SAMPLE_DIR / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                assert set(rec) == {"id", "source", "text"}
                sources[rec["source"]] += 1
                raw += len(rec["text"].encode())
    assert set(sources) == {"sotu", "shakespeare", "milton", "kjv", "austen", "moby"}
    assert 1_800_000 < raw < 2_000_000


def test_wordpiece_tokenizer_shape(mlm):
    tok = mlm.tokenizer
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == \
        [0, 1, 2, 3, 4]
    assert tok.encode("The WHALE", add_special_tokens=False).tokens == ["the", "whale"]


# -- prepared data -----------------------------------------------------------------------------

def test_sample_prepared_index(mlm, causal):
    for data, tokenizer, seps in ((mlm, "wordpiece", {"pad", "unk", "cls", "sep", "mask"}),
                                  (causal, "bpe", {"eos", "pad"})):
        index = json.loads((data.path / "index.json").read_text())
        assert index["format"] == "megaraptr-prepared" and index["version"] == 1
        assert index["tokenizer"] == tokenizer and index["vocab_size"] == 8192
        assert index["dtype"] == "uint16" and set(index["special_ids"]) == seps
        assert len(index["fingerprint"]) == 64
        assert index["inputs"]["val"] == [str(SAMPLE_DIR / "val.jsonl.gz")]
        for split, tokens in (("train", data.train_tokens), ("val", data.val_tokens)):
            entry = index["splits"][split]
            assert entry["tokens"] == len(tokens) == sum(s["tokens"] for s in entry["shards"])
            assert entry["documents"] == {"train": 154, "val": 10}[split]
            assert all(isinstance(m, np.memmap) and m.dtype == np.uint16 for m in tokens.shards)
            stream = tokens[:]
            # every document is followed by exactly one separator, none inside texts
            assert stream[-1] == data.sep_id
            assert int((stream == data.sep_id).sum()) == entry["documents"]
        assert (data.path / "tokenizer.json").is_file()
    assert mlm.cls_id == 2 and mlm.mask_id == 4 and mlm.eos_id is None
    assert causal.eos_id == causal.sep_id == 0 and causal.pad_id == 1 and causal.cls_id is None
    text = causal.tokenizer.decode(causal.val_tokens[:40].tolist())
    with gzip.open(SAMPLE_DIR / "val.jsonl.gz", "rt", encoding="utf-8") as f:
        assert json.loads(f.readline())["text"].startswith(text[:60])


def test_sample_prepares_in_seconds_and_resolves_from_cache(mlm, cache, tmp_path, monkeypatch):
    start = time.process_time()  # CPU seconds: a loaded machine's waiting does not count
    fresh = prepare([SAMPLE_DIR], tmp_path / "out", kind="mlm")
    assert time.process_time() - start < 10
    assert fresh.fingerprint == mlm.fingerprint
    assert np.array_equal(fresh.train_tokens[:], mlm.train_tokens[:])
    monkeypatch.setenv("MEGARAPTR_CACHE", str(cache))
    stamp = (mlm.path / "index.json").stat().st_mtime_ns
    again = resolve_data(None, kind="mlm")
    assert again.path == mlm.path and (mlm.path / "index.json").stat().st_mtime_ns == stamp
    assert resolve_data(mlm.path, kind="mlm").fingerprint == mlm.fingerprint


def test_txt_files_are_one_document_each(tmp_path):
    with gzip.open(CORPUS / "val.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in islice(f, 12)]
    for i, text in enumerate(texts):
        (tmp_path / "docs" / f"d{i:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "docs" / f"d{i:02d}.txt").write_text(text, encoding="utf-8")
    data = prepare(tmp_path / "docs", tmp_path / "out", kind="causal", vocab_size=1000)
    assert data.train_documents + data.val_documents == 12 and data.val_documents == 1


def test_shards_roll_over_and_read_across_boundaries(causal, tmp_path):
    stream = np.asarray(causal.val_tokens[:])
    writer = ShardWriter(tmp_path, "val", causal.dtype, max_tokens=1000)
    for piece in np.array_split(stream, 7):
        writer.write(piece)
    entry = writer.close()
    assert len(entry["shards"]) == -(-len(stream) // 1000) and entry["tokens"] == len(stream)
    tokens = ShardedTokens(tmp_path, [(s["file"], s["tokens"]) for s in entry["shards"]],
                           causal.dtype)
    for a, b in ((0, 10), (990, 1010), (1500, 3700), (len(stream) - 5, len(stream))):
        assert np.array_equal(tokens[a:b], stream[a:b])
    assert tokens[1000] == stream[1000] and tokens[-1] == stream[-1]
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


# -- errors and command line -------------------------------------------------------------------

def one_line_error(call, match: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_inputs_give_one_line_errors(tmp_path, causal):
    out = tmp_path / "out"
    one_line_error(lambda: prepare(tmp_path / "nope.jsonl", out, kind="mlm"),
                   r"nope\.jsonl: no such file")
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n\n{"id": 3, "body": "x"}\n')
    one_line_error(lambda: prepare(tmp_path / "a.jsonl", out, kind="mlm"),
                   r'a\.jsonl line 3: no "text" field')
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n')
    one_line_error(lambda: prepare(tmp_path / "b.jsonl", out, kind="mlm"),
                   r"b\.jsonl line 2: malformed JSON")
    (tmp_path / "c.jsonl").write_text('{"text": "  "}\n\n')
    one_line_error(lambda: prepare(tmp_path / "c.jsonl", out, kind="causal"),
                   r"c\.jsonl: no documents with text")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: prepare(tmp_path / "empty", out, kind="causal"),
                   r"empty: directory holds no")
    assert not out.exists()  # nothing written before the inputs were checked
    one_line_error(lambda: load_prepared(tmp_path), r"no index\.json")
    one_line_error(lambda: resolve_data(causal.path, kind="mlm", needed_by="--model bert"),
                   r"was prepared for causal LM \(bpe\), --model bert needs mlm")
    one_line_error(lambda: resolve_data([tmp_path / "missing"], kind="mlm"), "no such file")
    bad = tmp_path / "bad"
    bad.mkdir()
    index = json.loads((causal.path / "index.json").read_text())
    (bad / "index.json").write_text(json.dumps({**index, "version": 99}))
    one_line_error(lambda: load_prepared(bad), "format version 99")
