"""Held-out evaluation text (megaraptr.data.eval_sets): a corpus source held out of training, on a
small real corpus; its one-line refusals."""
from __future__ import annotations

import gzip
import json

import pytest
from support import small_corpus

from megaraptr.data.eval_sets import corpus_sources, hold_out_source
from megaraptr.errors import ConfigError


def texts(path):
    return [json.loads(line)["text"] for line in open(path)]


def test_a_held_out_source_is_in_no_training_or_val_text(tmp_path):
    corpus = small_corpus(tmp_path / "corpus")
    assert set(corpus_sources(corpus)) >= {"moby", "kjv", "linuxdoc"}
    split = hold_out_source(corpus, "moby", max_chars=30_000, cache_dir=tmp_path / "cache")
    moby = {json.loads(x)["text"] for name in ("train", "val")
            for x in gzip.open(corpus / f"{name}.jsonl.gz", "rt") if '"source": "moby"' in x}
    assert moby and not moby & set(texts(split.train)) and not moby & set(texts(split.val))
    held = texts(split.heldout)
    assert sum(map(len, held)) == 30_000 and all(any(m.startswith(h) for m in moby) for h in held)
    assert split.counts["train"] + split.counts["val"] == 65 + 61 - 4  # 2 + 2 moby documents
    again = hold_out_source(corpus, "moby", max_chars=30_000, cache_dir=tmp_path / "cache")
    assert again == split and again.train.stat().st_mtime_ns == split.train.stat().st_mtime_ns


def test_unknown_source_and_non_corpus_are_refused_in_one_line(tmp_path):
    corpus = small_corpus(tmp_path / "corpus")
    with pytest.raises(ConfigError, match=r"^--holdout-source: 'nope' is not a source of .*; "
                                          r"allowed: austen, brown, kjv, linuxdoc, milton, moby"):
        hold_out_source(corpus, "nope", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="is not a corpus folder; allowed: --data a folder"):
        hold_out_source(tmp_path, "moby", cache_dir=tmp_path / "cache")
