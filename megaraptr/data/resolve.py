"""Turning a ``--data`` argument into prepared data: the built-in sample, a prepared directory,
or raw text prepared through the cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from megaraptr.data.cache import prepare_cached
from megaraptr.data.prepared import INDEX_NAME, PreparedData, describe_kind, load_prepared
from megaraptr.data.sources import PathLike
from megaraptr.data.tokenizer import check_settings
from megaraptr.errors import DataError

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


def resolve_data(path: PathLike | Sequence[PathLike] | None = None, *, kind: str,
                 vocab_size: int = 8192, tokenizer_file: PathLike | None = None,
                 cache_dir: PathLike | None = None,
                 needed_by: str = "this model") -> PreparedData:
    """Finds or prepares the data a training run asked for.

    Args:
        path: None for the built-in sample; a prepared directory (holding ``index.json``),
            used as is; or raw text path(s) (files or directories), prepared via the cache.
        kind: The data kind the model needs: ``"mlm"`` or ``"causal"``.
        vocab_size: Vocabulary size when a tokenizer is trained (not for prepared dirs).
        tokenizer_file: A ``tokenizer.json`` to use instead of training one (raw text only).
        cache_dir: Cache directory (default ``$MEGARAPTR_CACHE`` or ``~/.cache/megaraptr``).
        needed_by: Who needs ``kind``, for the mismatch message (e.g. ``"--model bert"``).

    Returns:
        The prepared data.

    Raises:
        DataError: A path is missing, or a prepared directory was made for another kind.
    """
    check_settings(kind, vocab_size)
    if path is None:
        return prepare_cached([SAMPLE_DIR], kind=kind, vocab_size=vocab_size,
                              tokenizer_file=tokenizer_file, cache_dir=cache_dir)
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise DataError("data: no data paths given")
    for p in paths:
        if not Path(p).expanduser().exists():
            raise DataError(f"data: {Path(p).expanduser().absolute()}: no such file or directory")
    first = Path(paths[0]).expanduser().absolute()
    if (first / INDEX_NAME).is_file():
        if len(paths) > 1:
            raise DataError(f"data: {first} is a prepared directory; give it alone")
        data = load_prepared(first)
        if data.kind != kind:
            raise DataError(f"data: {first} was prepared for {describe_kind(data.kind)}, "
                            f"{needed_by} needs {kind} ({describe_kind(kind)})")
        return data
    return prepare_cached(paths, kind=kind, vocab_size=vocab_size,
                          tokenizer_file=tokenizer_file, cache_dir=cache_dir)
