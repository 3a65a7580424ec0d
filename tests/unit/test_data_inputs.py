"""Tests of megaraptr.data on real corpora: several inputs, .txt cutting, token pieces, the
small-corpus val split, and the token-id check when shards are opened.

Real text only: the built-in sample and the shared corpus, written by the tests as .txt/.jsonl
files; the broken prepared directories are copies of the sample's, edited by hand.
"""

from __future__ import annotations

import gzip
import json
import shutil
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from support import CORPUS

from megaraptr.data import load_prepared, prepare, resolve_data
from megaraptr.data.cache import cache_key
from megaraptr.data.sources import TXT_DOC_CHARS, iter_documents, resolve_inputs
from megaraptr.data.split import (HASH, NO_VAL, SMALLEST_HASH, choose_holdout, describe_split,
                                  doc_hash)
from megaraptr.data.tokenizer import token_pieces, train_tokenizer
from megaraptr.data.vocab import tokenizer_ids
from megaraptr.errors import DataError


def corpus_texts(n: int, split: str = "val") -> list[str]:
    with gzip.open(CORPUS / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in islice(f, n)]


def one_line_error(call, match: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


# -- .txt files are cut into documents, long texts into token pieces ---------------------------

def test_a_long_txt_file_is_cut_at_paragraph_breaks(tmp_path):
    text = "\n\n".join(corpus_texts(40))
    assert len(text) > 3 * TXT_DOC_CHARS
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    docs = list(iter_documents([tmp_path / "book.txt"]))
    assert "".join(docs) == text  # nothing lost, nothing added
    assert len(docs) >= len(text) // TXT_DOC_CHARS
    assert all(TXT_DOC_CHARS // 2 <= len(d) <= TXT_DOC_CHARS for d in docs[:-1])
    assert all(d.endswith("\n\n") for d in docs[:-1])  # a separator lands between paragraphs


def test_a_single_line_txt_file_is_cut_at_spaces(tmp_path):
    text = " ".join(" ".join(t.split()) for t in corpus_texts(30))
    (tmp_path / "line.txt").write_text(text, encoding="utf-8")
    docs = list(iter_documents([tmp_path / "line.txt"]))
    assert "".join(docs) == text and len(docs) > 2
    assert all(d.endswith(" ") and len(d) <= TXT_DOC_CHARS for d in docs[:-1])


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_token_pieces_tokenize_like_the_whole_text(kind, request):
    tok = request.getfixturevalue(kind).tokenizer
    text = "\n\n".join(corpus_texts(6))
    pieces = token_pieces(text, 1000)
    assert "".join(pieces) == text and len(pieces) > len(text) // 1000
    assert all(len(p) <= 1000 for p in pieces)
    assert all(p[0] == " " and not p[1].isspace() for p in pieces[1:])
    whole = tok.encode(text, add_special_tokens=False).ids
    assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] == whole
    assert token_pieces(text) == [text]  # below PIECE_CHARS: whole


# -- several inputs ----------------------------------------------------------------------------

def test_several_inputs_in_order_and_each_file_once(tmp_path):
    texts = corpus_texts(12)
    (tmp_path / "a.txt").write_text(texts[0], encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[1:6]))
    (tmp_path / "dir").mkdir()
    for i, t in enumerate(texts[6:]):
        (tmp_path / "dir" / f"d{i}.txt").write_text(t, encoding="utf-8")
    paths = [tmp_path / "b.jsonl", tmp_path / "a.txt", tmp_path / "dir"]
    files = resolve_inputs(paths)
    assert files.train[:2] == (tmp_path / "b.jsonl", tmp_path / "a.txt") and not files.val
    assert len(files.train) == 2 + 6
    assert cache_key(files.train, (), {}) != cache_key(files.train[::-1], (), {})
    one_line_error(lambda: resolve_inputs([tmp_path / "dir", tmp_path / "dir" / "d0.txt"]),
                   r"d0\.txt: named twice")
    data = resolve_data(paths, kind="causal", vocab_size=1000, cache_dir=tmp_path / "cache")
    assert data.train_documents + data.val_documents == 12
    assert data.index["inputs"]["train"] == [str(f) for f in files.train]
    line = data.describe()
    assert "b.jsonl" in line and "a.txt" in line and str(tmp_path / "dir") in line
    assert "\n" not in line and "val split: 1 of 12 documents" in line
    swapped = resolve_data(paths[::-1], kind="causal", vocab_size=1000,
                           cache_dir=tmp_path / "cache")
    assert swapped.path != data.path  # the key covers the order
    one_line_error(lambda: resolve_data([data.path, tmp_path / "a.txt"], kind="causal"),
                   "is a prepared directory; give it alone")


# -- the val split of a small corpus -----------------------------------------------------------

def test_small_corpus_split_rule():
    texts = corpus_texts(60)
    hashes, lengths = [doc_hash(t) for t in texts], [len(t) for t in texts]
    holdout = choose_holdout(hashes, lengths, 0.2, "x", "y")
    assert holdout.rule == HASH and 3 <= sum(map(holdout.is_val, hashes)) <= 25
    for n in (2, 3, 5, 12):  # none below 1%: one document, no longer than average, held out
        holdout = choose_holdout(hashes[:n], lengths[:n], 0.01, "x", "y")
        held = [i for i, h in enumerate(hashes[:n]) if holdout.is_val(h)]
        assert holdout.rule == SMALLEST_HASH and len(held) == 1
        assert lengths[held[0]] * n <= sum(lengths[:n])  # at most 1/n of the text
        short = [h for h, k in zip(hashes[:n], lengths[:n]) if k * n <= sum(lengths[:n])]
        assert hashes[held[0]] == min(short)
    assert choose_holdout(hashes[:1], lengths[:1], 0.0, "x", "y").rule == NO_VAL
    message = one_line_error(lambda: choose_holdout(hashes[:1], lengths[:1], 0.01, "one.txt",
                                                    "give more"),
                             "one.txt: 1 document is too few")
    assert message.endswith("give more")


def test_the_split_line_names_val_inputs_also_for_older_indexes(mlm):
    line = describe_split(mlm.index)
    assert line == (f"val split: {mlm.val_documents} documents ({mlm.num_val_tokens:,} tokens) "
                    f"from the val input {mlm.index['inputs']['val'][0]}")
    older = {k: v for k, v in mlm.index.items() if k != "split"}
    assert describe_split(older) == line


def test_one_txt_file_holds_out_a_document_or_says_what_to_give(tmp_path):
    text = "\n\n".join(corpus_texts(30))
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    data = prepare(tmp_path / "one.txt", tmp_path / "out", kind="mlm", vocab_size=2000)
    n = len(list(iter_documents([tmp_path / "one.txt"])))
    assert (data.train_documents, data.val_documents) == (n - 1, 1) and n >= 3
    assert data.index["split"]["rule"] == SMALLEST_HASH
    total = data.num_train_tokens + data.num_val_tokens
    assert 1000 < data.num_val_tokens < 1.5 * total / n  # about 1/n of the text or less
    assert "val split: 1 of" in data.describe() and "smallest document hash" in data.describe()
    (tmp_path / "short.txt").write_text(corpus_texts(1)[0][:50_000], encoding="utf-8")
    message = one_line_error(lambda: prepare(tmp_path / "short.txt", tmp_path / "o2",
                                             kind="mlm"), r"short\.txt: 1 document is too few")
    assert f"at most {TXT_DOC_CHARS:,} characters" in message and "val.<ext>" in message
    assert not (tmp_path / "o2").exists()  # refused before tokenising


# -- token ids against the vocabulary ----------------------------------------------------------

def copy_prepared(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_shards_are_checked_against_the_vocabulary(mlm, tmp_path):
    assert tokenizer_ids(mlm.path / "tokenizer.json") == mlm.vocab_size == 8192
    shards = mlm.index["splits"]["train"]["shards"]
    assert shards[0]["max_id"] == int(np.max(mlm.train_tokens.shards[0])) < 8192
    assert not mlm.notes

    # A tokenizer.json swapped for a smaller one.
    swapped = copy_prepared(mlm.path, tmp_path / "swapped")
    train_tokenizer(corpus_texts(20), "mlm", 1000).save(str(swapped / "tokenizer.json"))
    small = tokenizer_ids(swapped / "tokenizer.json")
    message = one_line_error(lambda: load_prepared(swapped), r"train_00000\.bin: largest token "
                             rf"id {shards[0]['max_id']} is outside the vocabulary of {small} ids")
    assert "vocab_size 8192" in message

    # A hand-edited shard, in a directory whose index records no largest ids (older format).
    edited = copy_prepared(mlm.path, tmp_path / "edited")
    index = json.loads((edited / "index.json").read_text())
    for split in index["splits"].values():
        for shard in split["shards"]:
            del shard["max_id"]
    (edited / "index.json").write_text(json.dumps(index))
    assert "by reading 2 shard(s)" in load_prepared(edited).notes[0]  # computed once, said so
    ids = np.memmap(edited / "val_00000.bin", dtype=np.uint16, mode="r+")
    ids[100] = 9000
    ids.flush()
    del ids
    one_line_error(lambda: load_prepared(edited), r"val_00000\.bin: largest token id 9000 is "
                   r"outside the vocabulary of 8192 ids")

    # Edited after preparing, max_id still recorded: the read that meets it refuses.
    later = copy_prepared(mlm.path, tmp_path / "later")
    ids = np.memmap(later / "val_00000.bin", dtype=np.uint16, mode="r+")
    ids[100] = 9000
    ids.flush()
    del ids
    data = load_prepared(later)
    assert len(data.val_tokens[:100]) == 100
    one_line_error(lambda: data.val_tokens[90:110], r"val_00000\.bin: holds token id 9000")
    one_line_error(lambda: data.val_tokens[100], "outside the vocabulary of 8192 ids")
