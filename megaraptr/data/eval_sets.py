"""Held-out evaluation text beside the val split: a corpus source held out of training, or any
text file, prepared with the training data's own tokenizer.

A corpus folder (``train.jsonl(.gz)`` and ``val.jsonl(.gz)``, each line with a ``"source"``
field, like the shared corpus) is split by :func:`hold_out_source` into

- ``train.jsonl`` and ``val.jsonl``: the corpus's train and val documents of every other
  source (what the model trains on and its in-domain val split);
- ``heldout.jsonl``: documents of the held-out source only, its val documents first, then its
  train documents (never trained on), up to ``max_chars`` characters (an out-of-domain check).

The files go to ``<cache>/heldout/<key>/`` (the key hashes the corpus files' identities, the
source and ``max_chars``), written once, so the prepared-data cache (keyed on file identities)
finds its entries again. :func:`prepare_eval_set` prepares any held-out text with a prepared
folder's ``tokenizer.json``: its val split is the text (its train split a copy, unused).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from megaraptr.data.cache import cache_root, prepare_cached
from megaraptr.data.prepared import TOKENIZER_NAME, PreparedData
from megaraptr.errors import ConfigError

MAX_HELDOUT_CHARS = 1_000_000
"""Enough for 256 eval sequences of 512 tokens with any vocabulary this project uses."""


@dataclass(frozen=True)
class SourceSplit:
    """The files of a corpus with one source held out."""

    source: str
    train: Path
    val: Path
    heldout: Path
    counts: dict
    """Documents written: ``{"train": n, "val": n, "heldout": n}``."""


def corpus_file(corpus: Path, split: str) -> Optional[Path]:
    """``corpus/<split>.jsonl.gz`` or ``.jsonl``, whichever exists (None if neither)."""
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (corpus / name).is_file():
            return corpus / name
    return None


def _lines(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def corpus_sources(corpus: Path) -> Counter:
    """Train documents per ``source`` of a corpus folder (checks the folder's shape)."""
    train, val = corpus_file(corpus, "train"), corpus_file(corpus, "val")
    if train is None or val is None:
        raise ConfigError("--holdout-source", f"{corpus} is not a corpus folder; allowed: --data "
                          "a folder with train.jsonl(.gz) and val.jsonl(.gz) whose lines have a "
                          "\"source\" field")
    counts = Counter(doc.get("source") for doc in _lines(train))
    if None in counts:
        raise ConfigError("--holdout-source", f"{train}: lines without a \"source\" field; "
                          "allowed: a corpus whose every line names its source")
    return counts


def hold_out_source(corpus: Path, source: str, *, max_chars: int = MAX_HELDOUT_CHARS,
                    cache_dir=None) -> SourceSplit:
    """Write (once) the train/val files without ``source`` and its held-out text.

    Raises:
        ConfigError: Not a corpus folder, or ``source`` is not one of its sources.
    """
    corpus = Path(corpus).expanduser().absolute()
    train_in, val_in = corpus_file(corpus, "train"), corpus_file(corpus, "val")
    ident = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in (train_in, val_in)
             if p is not None]
    key = hashlib.sha256(json.dumps([ident, source, max_chars]).encode()).hexdigest()[:16]
    out = cache_root(cache_dir) / "heldout" / f"{source}-{key}"
    done = out / "counts.json"
    files = {name: out / f"{name}.jsonl" for name in ("train", "val", "heldout")}
    if done.is_file():
        return SourceSplit(source, files["train"], files["val"], files["heldout"],
                           json.loads(done.read_text()))
    sources = corpus_sources(corpus)
    if source not in sources:
        raise ConfigError("--holdout-source", f"{source!r} is not a source of {corpus}; allowed: "
                          f"{', '.join(sorted(sources))}")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    counts, held_chars = Counter(), 0
    with open(tmp / "train.jsonl", "w") as tr, open(tmp / "val.jsonl", "w") as va, \
            open(tmp / "heldout.jsonl", "w") as ho:
        for split, path, dst in (("val", val_in, va), ("train", train_in, tr)):
            for doc in _lines(path):
                if doc["source"] != source:
                    dst.write(json.dumps({"text": doc["text"]}) + "\n")
                    counts[split] += 1
                elif held_chars < max_chars:
                    text = doc["text"][:max_chars - held_chars]
                    ho.write(json.dumps({"text": text}) + "\n")
                    held_chars += len(text)
                    counts["heldout"] += 1
    (tmp / "counts.json").write_text(json.dumps(dict(counts)))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, out)
    except OSError:  # another process got there first: use its files
        shutil.rmtree(tmp, ignore_errors=True)
    return SourceSplit(source, files["train"], files["val"], files["heldout"],
                       json.loads(done.read_text()))


def prepare_eval_set(text: Path, tokenizer_of: PreparedData, *, cache_dir=None) -> PreparedData:
    """Prepare held-out ``text`` (a .txt/.jsonl(.gz) file) with ``tokenizer_of``'s tokenizer;
    the result's val split is the whole text."""
    text = Path(text).expanduser().absolute()
    st = text.stat()
    key = hashlib.sha256(json.dumps([str(text), st.st_size, st.st_mtime_ns]).encode()).hexdigest()
    twin = cache_root(cache_dir) / "eval-text" / key[:16] / ("train" + "".join(text.suffixes))
    if not twin.is_file():  # prepare wants a train input other than the val file
        twin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(text, twin.with_name(twin.name + ".tmp"))
        os.replace(twin.with_name(twin.name + ".tmp"), twin)
    return prepare_cached([twin], val_inputs=[text], kind=tokenizer_of.kind,
                          vocab_size=tokenizer_of.vocab_size,
                          tokenizer_file=tokenizer_of.path / TOKENIZER_NAME, cache_dir=cache_dir)
