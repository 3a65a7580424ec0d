"""Turning a ``--data`` argument into prepared data: the built-in sample, a prepared directory,
or raw text prepared through the cache.

``--data`` takes one or more paths: one prepared directory (alone), or any mix of raw files and
folders (``--data a.txt b.jsonl dir/``), read in the order given; the cache entry is keyed on
all of their files in that order (cache.py). ``PreparedData.describe()`` names them for the
run's log, with the split sizes and how the val split was made.
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
            used as is; or raw text paths (files and directories, mixed, in order), prepared
            via the cache.
        kind: The data kind the model needs: ``"mlm"`` or ``"causal"``.
        vocab_size: Vocabulary size when a tokenizer is trained (not for prepared dirs).
        tokenizer_file: A ``tokenizer.json`` to use instead of training one (raw text only).
        cache_dir: Cache directory (default ``$MEGARAPTR_CACHE`` or ``~/.cache/megaraptr``).
        needed_by: Who needs ``kind``, for the mismatch message (e.g. ``"--model bert"``).

    Returns:
        The prepared data.

    Raises:
        DataError: A path is missing, a prepared directory is given with other paths or was
            made for another kind, or the inputs cannot be prepared (see ``prepare``).
    """
    check_settings(kind, vocab_size)
    if path is None:
        data = prepare_cached([SAMPLE_DIR], kind=kind, vocab_size=vocab_size,
                              tokenizer_file=tokenizer_file, cache_dir=cache_dir)
        data.sources = ("the built-in sample",)
        return data
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise DataError("data: no data paths given")
    for p in paths:
        if not Path(p).expanduser().exists():
            raise DataError(f"data: {Path(p).expanduser().absolute()}: no such file or directory")
    prepared = [Path(p).expanduser().absolute() for p in paths
                if (Path(p).expanduser() / INDEX_NAME).is_file()]
    if prepared and len(paths) > 1:
        raise DataError(f"data: {prepared[0]} is a prepared directory; give it alone, or give "
                        f"raw .txt/.jsonl(.gz) files and folders only")
    if prepared:
        data = load_prepared(prepared[0])
        if data.kind != kind:
            raise DataError(f"data: {prepared[0]} was prepared for {describe_kind(data.kind)}, "
                            f"{needed_by} needs {kind} ({describe_kind(kind)})")
    else:
        data = prepare_cached(paths, kind=kind, vocab_size=vocab_size,
                              tokenizer_file=tokenizer_file, cache_dir=cache_dir)
    data.sources = tuple(str(p) for p in paths)
    return data
