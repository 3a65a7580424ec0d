"""Preparing raw text into a tokenized, sharded directory (see prepared.py for the layout).

Steps: read the inputs once to count documents and fix the train/val split (split.py; a
single document is refused here, before any tokenising); train the tokenizer on the train
documents (unless a ``tokenizer.json`` is given); tokenize every document in batches
(``encode_batch``) and append it, followed by the separator token (``[SEP]`` for mlm,
``<|endoftext|>`` for causal), to its split's token stream; write ``index.json`` last, with
the split rule used and each shard's largest token id.

Memory: inputs are streamed (sources.py); one ``encode_batch`` call holds at most
``BATCH_CHARS`` + ``PIECE_CHARS`` characters (1.25 Mi), documents longer than ``PIECE_CHARS``
being trained on and tokenized in pieces (tokenizer.py). So however long a ``.txt`` file or its
lines are, preparing it adds less than ``PREPARE_MEMORY_BYTES`` (256 MiB) to the process's peak
memory (a 40 MB single-line file: about +70 MiB, tokenizer training included); what still grows
with the corpus is the list of document hashes (~100 bytes a document) and the tokenizer
trainer's table of distinct words. A ``.jsonl`` line is read whole, so there memory also grows
with the longest line (a few times its size).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megaraptr.data.prepared import (INDEX_FORMAT, INDEX_NAME, INDEX_VERSION, TOKENIZER_NAME,
                                     PreparedData, load_prepared, write_index)
from megaraptr.data.shards import DEFAULT_SHARD_TOKENS, ShardWriter, token_dtype
from megaraptr.data.sources import (TXT_DOC_CHARS, InputFiles, PathLike, describe, iter_documents,
                                    resolve_inputs)
from megaraptr.data.split import VAL_INPUTS, Holdout, choose_holdout, doc_hash
from megaraptr.data.tokenizer import (TOKENIZER_KINDS, all_special_ids, check_settings,
                                      load_tokenizer, separator_name, special_ids, token_pieces,
                                      train_tokenizer)
from megaraptr.errors import ConfigError, DataError

BATCH_CHARS = 1 << 20
PREPARE_MEMORY_BYTES = 256 << 20
_OUR_FILES = re.compile(r"^(index\.json(\.tmp)?|tokenizer\.json|(train|val)_\d{5}\.bin)$")


class _Documents:
    """A re-iterable view of the train documents (not held out), in token pieces."""

    def __init__(self, files: Sequence[Path], holdout: Holdout):
        self.files, self.holdout = files, holdout

    def __iter__(self) -> Iterator[str]:
        for text in iter_documents(self.files):
            if not self.holdout.is_val(doc_hash(text)):
                yield from token_pieces(text)


_ALLOWED = (f"give more text (a .txt file is cut into documents of at most {TXT_DOC_CHARS:,} "
            f"characters, a .jsonl file holds one per line), more files, or a folder holding "
            f"train.<ext> and val.<ext> files")


def _survey(files: InputFiles, val_fraction: float) -> tuple[Holdout, int]:
    """Reads the inputs once: checks they hold documents and fixes the split (split.py).

    Returns:
        (the hold-out, total number of documents).
    """
    hashes, lengths = [], []
    for text in iter_documents(files.train):
        hashes.append(doc_hash(text))
        lengths.append(len(text))
    if not hashes:
        raise DataError(f"data: {describe(files.train)}: no documents with text")
    if files.val:
        n_val = sum(1 for _ in iter_documents(files.val))
        if not n_val:
            raise DataError(f"data: {describe(files.val)}: no val documents with text")
        return Holdout(VAL_INPUTS), len(hashes) + n_val
    holdout = choose_holdout(hashes, lengths, val_fraction, describe(files.train), _ALLOWED)
    return holdout, len(hashes)


def _clear_out_dir(out: Path) -> None:
    """Creates ``out`` or empties an earlier prepared directory there (index.json first)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"data: {out}: output path exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in out.iterdir())
    others = [n for n in names if not _OUR_FILES.match(n)]
    if others:
        raise DataError(f"data: {out}: output directory holds other files ({others[0]}); "
                        f"use a new or empty directory")
    for name in sorted(names, key=lambda n: n != INDEX_NAME):
        (out / name).unlink()


def _encode_into(tok, docs: Iterator[tuple[str, str]], writers: dict[str, ShardWriter],
                 sep: int, digest, progress: tqdm) -> None:
    """Tokenizes (split, text) pairs in batches and appends them to the split writers; a text
    longer than ``PIECE_CHARS`` goes in pieces, its separator after the last."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    batch: list[tuple[str, str, bool]] = []  # (split, text or piece, ends a document)
    chars = 0

    def flush() -> None:
        encodings = encode([t for _, t, _ in batch], add_special_tokens=False)
        streams: dict[str, list[int]] = {name: [] for name in writers}
        for (split, _, last), enc in zip(batch, encodings):
            streams[split].extend(enc.ids)
            if last:
                streams[split].append(sep)
                writers[split].documents += 1
                progress.update(1)
        for split, ids in streams.items():
            if ids:
                writers[split].write(np.asarray(ids, dtype=np.int64))
        batch.clear()

    for split, text in docs:
        digest.update(split.encode() + b"\0" + text.encode("utf-8") + b"\0")
        pieces = token_pieces(text)
        for i, piece in enumerate(pieces):
            batch.append((split, piece, i == len(pieces) - 1))
            chars += len(piece)
            if chars >= BATCH_CHARS:
                flush()
                chars = 0
    if batch:
        flush()


def _routed(files: InputFiles, holdout: Holdout) -> Iterator[tuple[str, str]]:
    """Yields (split, text) for every document, train inputs first, then val inputs."""
    for text in iter_documents(files.train):
        yield ("val" if holdout.is_val(doc_hash(text)) else "train"), text
    for text in iter_documents(files.val):
        yield "val", text


def prepare_files(files: InputFiles, out_dir: PathLike, *, kind: str, vocab_size: int = 8192,
                  tokenizer_file: PathLike | None = None, val_fraction: float = 0.01,
                  shard_tokens: int = DEFAULT_SHARD_TOKENS) -> PreparedData:
    """Prepares already resolved input files (see ``prepare``).

    Args:
        files: Train and val files from ``sources.resolve_inputs``.
        out_dir: Output directory (created; must be new, empty or an earlier prepared one).
        kind: ``"mlm"`` or ``"causal"``.
        vocab_size: Vocabulary size of a trained tokenizer.
        tokenizer_file: Use this ``tokenizer.json`` instead of training one.
        val_fraction: Fraction of documents held out when no val files are given.
        shard_tokens: Largest number of tokens in one shard file.

    Returns:
        The prepared data.
    """
    check_settings(kind, vocab_size)
    if not 0 <= val_fraction < 1:
        raise ConfigError("val_fraction", f"must be in [0, 1), not {val_fraction!r}")
    tok = load_tokenizer(tokenizer_file) if tokenizer_file is not None else None
    out = Path(out_dir).expanduser().absolute()
    holdout, n_docs = _survey(files, val_fraction)
    tty = sys.stderr.isatty()
    _clear_out_dir(out)
    if tok is None:
        tok = train_tokenizer(_Documents(files.train, holdout), kind, vocab_size,
                              show_progress=tty)
    tok.no_truncation()
    tok.no_padding()
    source = str(tokenizer_file) if tokenizer_file is not None else "trained tokenizer"
    named = special_ids(tok, kind, source)
    tok.save(str(out / TOKENIZER_NAME))
    tokenizer_sha = hashlib.sha256((out / TOKENIZER_NAME).read_bytes()).hexdigest()
    actual_vocab = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    dtype = token_dtype(actual_vocab)
    settings = {"kind": kind, "vocab_size": vocab_size, "val_fraction": val_fraction,
                "held_out_by_hash": holdout.rule != VAL_INPUTS, "tokenizer_sha256": tokenizer_sha,
                "tokenizer_file": None if tokenizer_file is None else str(tokenizer_file),
                "version": INDEX_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    writers = {s: ShardWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
    sep = named[separator_name(kind)]
    tok.encode_special_tokens = True  # "[SEP]" or "<|endoftext|>" inside a text is plain text
    with tqdm(total=n_docs, unit="doc", desc=f"tokenizing ({kind})", disable=not tty) as bar:
        _encode_into(tok, _routed(files, holdout), writers, sep, digest, bar)
    splits = {s: w.close() for s, w in writers.items()}
    model_type = type(tok.model).__name__.lower()
    index = {
        "format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": kind,
        "tokenizer": TOKENIZER_KINDS[kind] if tokenizer_file is None else model_type,
        "vocab_size": actual_vocab, "dtype": dtype.name, "special_ids": named,
        "all_special_ids": all_special_ids(tok, named), "separator_id": sep,
        "splits": splits, "fingerprint": digest.hexdigest(), "settings": settings,
        "inputs": {"train": [str(f) for f in files.train], "val": [str(f) for f in files.val]},
        "split": {"rule": holdout.rule, "txt_doc_chars": TXT_DOC_CHARS},
    }
    write_index(out, index)
    return load_prepared(out)


def prepare(inputs: PathLike | Sequence[PathLike], out_dir: PathLike, *, kind: str,
            vocab_size: int = 8192, tokenizer_file: PathLike | None = None,
            val_inputs: PathLike | Sequence[PathLike] | None = None,
            val_fraction: float = 0.01) -> PreparedData:
    """Tokenizes raw text into a prepared data directory.

    Args:
        inputs: ``.txt`` (cut into documents of at most ``TXT_DOC_CHARS`` characters),
            ``.jsonl`` / ``.jsonl.gz`` (a ``"text"`` field per line) files, or directories of
            them (see sources.py).
        out_dir: Output directory (created; must be new, empty or an earlier prepared one,
            whose files are replaced).
        kind: ``"mlm"`` (WordPiece, BERT style) or ``"causal"`` (byte-level BPE, GPT style).
        vocab_size: Vocabulary size of the trained tokenizer (ignored with ``tokenizer_file``).
        tokenizer_file: A ``tokenizer.json`` to use instead of training one.
        val_inputs: Val inputs; when absent, val comes from a corpus-style directory's val file
            or a ``val_fraction`` hold-out by document hash (split.py).
        val_fraction: Fraction of documents held out as val when no val inputs exist.

    Returns:
        The prepared data.

    Raises:
        DataError: An input is missing, unreadable, malformed or empty, or a single document
            with no val inputs (nothing to hold out).
        ConfigError: A setting is out of range.
    """
    files = resolve_inputs(inputs, val_inputs)
    return prepare_files(files, out_dir, kind=kind, vocab_size=vocab_size,
                         tokenizer_file=tokenizer_file, val_fraction=val_fraction)
