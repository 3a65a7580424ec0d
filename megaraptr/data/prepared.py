"""A prepared data directory: the ``index.json`` format, its validation, and ``PreparedData``.

Layout of a prepared directory::

    tokenizer.json                  the tokenizers tokenizer
    train_00000.bin, ...            train token shards (see shards.py)
    val_00000.bin, ...              val token shards
    index.json                      written last, so a directory without it is incomplete

``index.json``::

    {"format": "megaraptr-prepared", "version": 1,
     "kind": "mlm" | "causal", "tokenizer": "wordpiece" | "bpe", "vocab_size": int,
     "dtype": "uint16" | "uint32",
     "special_ids": {"pad": ..., "sep": ..., "cls": ..., "mask": ..., "unk": ...}   (mlm)
                    {"eos": ..., "pad": ...}                                        (causal),
     "all_special_ids": [...], "separator_id": int,
     "splits": {"train": {"shards": [{"file": ..., "tokens": n, "max_id": i}], "tokens": n,
                          "documents": d},
                "val": {...}},
     "fingerprint": sha256 hex of the settings and every document's text and split,
     "settings": {...}, "inputs": {"train": [paths], "val": [paths]},
     "split": {"rule": "val inputs" | "hash" | "smallest hash" | "none", "txt_doc_chars": n}}

``max_id`` (each shard's largest id) and ``split`` (how the val split was made, split.py) are
absent from directories prepared by older versions; both are optional. Opening a directory
checks its token ids against the vocabulary (vocab.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megaraptr.data.shards import ShardedTokens, token_dtype
from megaraptr.data.split import describe_split
from megaraptr.data.tokenizer import KIND_NAMES, TOKENIZER_KINDS, load_tokenizer
from megaraptr.data.vocab import check_token_ids
from megaraptr.errors import DataError

INDEX_FORMAT = "megaraptr-prepared"
INDEX_VERSION = 1
INDEX_NAME = "index.json"
TOKENIZER_NAME = "tokenizer.json"
_REQUIRED_SPECIALS = {"mlm": ("pad", "sep", "cls", "mask"), "causal": ("eos", "pad")}


def describe_kind(kind: str) -> str:
    """Names a data kind for messages.

    Args:
        kind: ``"mlm"`` or ``"causal"``.

    Returns:
        E.g. ``"causal LM (bpe)"``.
    """
    return f"{KIND_NAMES[kind]} ({TOKENIZER_KINDS[kind]})"


def write_index(out_dir: Path, index: dict[str, Any]) -> None:
    """Writes ``index.json`` atomically (temp file, then rename).

    Args:
        out_dir: The prepared directory.
        index: The index content.
    """
    tmp = out_dir / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / INDEX_NAME)


@dataclass
class PreparedData:
    """Tokenized train and val streams on disk, ready for batching.

    Attributes:
        path: The prepared directory.
        kind: ``"mlm"`` or ``"causal"``.
        vocab_size: Number of token ids (the model's embedding size).
        dtype: On-disk token dtype.
        special: Special token ids by name (see the module docstring).
        all_special_ids: Every special id (never masked nor drawn as a random replacement).
        train_tokens: The train token stream.
        val_tokens: The val token stream.
        train_documents: Number of train documents.
        val_documents: Number of val documents.
        fingerprint: Hash of the inputs' text and the settings.
        index: The raw ``index.json`` content.
        sources: The paths the data was asked for as (``resolve_data`` sets them), for logs.
        notes: What opening the directory had to do (e.g. read the shards to check ids).
    """

    path: Path
    kind: str
    vocab_size: int
    dtype: np.dtype
    special: dict[str, int]
    all_special_ids: tuple[int, ...]
    train_tokens: ShardedTokens
    val_tokens: ShardedTokens
    train_documents: int
    val_documents: int
    fingerprint: str
    index: dict[str, Any] = field(repr=False)
    sources: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    _tokenizer: Any = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """One line for a run's log: the inputs, where they were prepared, the split sizes and
        how the val split was made.

        Returns:
            E.g. ``"data: one.txt -> /cache/prepared/mlm-8192-...: 20,587 train tokens in 8
            documents; val split: 1 of 9 documents (...) held out: ..."``.
        """
        given = self.sources or tuple(self.index.get("inputs", {}).get("train", [])) or ("?",)
        named = ", ".join(given[:4]) + (f" and {len(given) - 4} more" if len(given) > 4 else "")
        return "; ".join([f"data: {named} -> {self.path}: {self.num_train_tokens:,} train "
                          f"tokens in {self.train_documents:,} documents",
                          describe_split(self.index)] + self.notes)

    @property
    def tokenizer_kind(self) -> str:
        """``"wordpiece"`` or ``"bpe"``."""
        return TOKENIZER_KINDS[self.kind]

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path / TOKENIZER_NAME)
        return self._tokenizer

    @property
    def pad_id(self) -> int:
        """Padding id."""
        return self.special["pad"]

    @property
    def sep_id(self) -> int:
        """Document separator id: ``[SEP]`` for mlm, ``<|endoftext|>`` for causal."""
        return self.special["sep" if self.kind == "mlm" else "eos"]

    @property
    def cls_id(self) -> int | None:
        """``[CLS]`` id (mlm only)."""
        return self.special.get("cls")

    @property
    def mask_id(self) -> int | None:
        """``[MASK]`` id (mlm only)."""
        return self.special.get("mask")

    @property
    def eos_id(self) -> int | None:
        """``<|endoftext|>`` id (causal only)."""
        return self.special.get("eos")

    @property
    def num_train_tokens(self) -> int:
        """Tokens in the train stream."""
        return len(self.train_tokens)

    @property
    def num_val_tokens(self) -> int:
        """Tokens in the val stream."""
        return len(self.val_tokens)


def _bad(path: Path, what: str) -> DataError:
    return DataError(f"data: {path / INDEX_NAME}: {what}; prepare the data again "
                     f"(python -m megaraptr.data prepare)")


def _split(directory: Path, index: dict, name: str, dtype: np.dtype) -> tuple[ShardedTokens, int]:
    entry = index["splits"].get(name)
    try:
        shards = [(str(s["file"]), int(s["tokens"])) for s in entry["shards"]]
        documents = int(entry["documents"])
    except (TypeError, KeyError, ValueError):
        raise _bad(directory, f"bad entry for split {name!r}") from None
    if any(os.sep in f or f.startswith(".") for f, _ in shards):
        raise _bad(directory, f"bad shard file name in split {name!r}")
    return ShardedTokens(directory, shards, dtype), documents


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Opens a prepared data directory.

    Args:
        path: The directory (holding ``index.json``).

    Returns:
        The prepared data, shards memory-mapped, tokenizer loaded on first use.

    Raises:
        DataError: The directory, ``index.json`` or a shard is missing or inconsistent, the
            index has another format version, or a shard holds an id outside the vocabulary.
    """
    directory = Path(path).expanduser().absolute()
    if not directory.is_dir():
        raise DataError(f"data: {directory}: no such directory")
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise DataError(f"data: {directory}: no {INDEX_NAME} (not a prepared data directory; "
                        f"prepare one with python -m megaraptr.data prepare)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(directory, f"unreadable ({err})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise _bad(directory, f"not a {INDEX_FORMAT} index")
    if index.get("version") != INDEX_VERSION:
        raise _bad(directory, f"format version {index.get('version')!r}, this megaraptr reads "
                   f"version {INDEX_VERSION}")
    kind = index.get("kind")
    if kind not in TOKENIZER_KINDS or index.get("tokenizer") != TOKENIZER_KINDS[kind]:
        raise _bad(directory, f"unknown kind/tokenizer {kind!r}/{index.get('tokenizer')!r}")
    try:
        vocab_size = int(index["vocab_size"])
        dtype = np.dtype(index["dtype"])
        special = {str(k): int(v) for k, v in index["special_ids"].items()}
        all_special = tuple(sorted(int(i) for i in index["all_special_ids"]))
        fingerprint = str(index["fingerprint"])
        splits_ok = isinstance(index["splits"], dict)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise _bad(directory, f"missing or bad field ({err})") from None
    if dtype != token_dtype(vocab_size):
        raise _bad(directory, f"dtype {dtype} does not fit vocab_size {vocab_size}")
    missing = [k for k in _REQUIRED_SPECIALS[kind] if k not in special]
    if missing or not splits_ok:
        raise _bad(directory, f"missing special ids {missing}" if missing else "bad splits")
    if not (directory / TOKENIZER_NAME).is_file():
        raise DataError(f"data: {directory}: no {TOKENIZER_NAME}; prepare the data again")
    train, train_docs = _split(directory, index, "train", dtype)
    val, val_docs = _split(directory, index, "val", dtype)
    notes = check_token_ids(directory, index, vocab_size, directory / TOKENIZER_NAME,
                            {"train": train, "val": val})
    return PreparedData(path=directory, kind=kind, vocab_size=vocab_size, dtype=dtype,
                        special=special, all_special_ids=all_special, train_tokens=train,
                        val_tokens=val, train_documents=train_docs, val_documents=val_docs,
                        fingerprint=fingerprint, index=index, notes=notes)
