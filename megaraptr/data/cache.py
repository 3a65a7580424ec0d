"""The prepared-data cache: prepare raw inputs once per machine and reuse the result.

Entries live in ``<cache>/prepared/<kind>-<vocab>-<key>/`` where ``<cache>`` is ``cache_dir``,
else ``$MEGARAPTR_CACHE``, else ``~/.cache/megaraptr``, and ``<key>`` hashes each input file's
absolute path, size and modification time, in the order given, together with the settings (so
editing, adding or reordering an input prepares again; ``.txt`` inputs add the size their
documents are cut to, ``sources.TXT_DOC_CHARS``, as their cutting decides the tokens). Several
processes asking for the same entry at once (e.g. the ranks of one machine) serialize on an
``fcntl`` lock: the first prepares into a temporary directory and renames it into place
atomically, the others wait and then load it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from megaraptr.data.prepare import prepare_files
from megaraptr.data.prepared import INDEX_NAME, INDEX_VERSION, PreparedData, load_prepared
from megaraptr.data.sources import TXT_DOC_CHARS, PathLike, resolve_inputs
from megaraptr.data.tokenizer import check_settings
from megaraptr.errors import DataError

CACHE_ENV = "MEGARAPTR_CACHE"


def cache_root(cache_dir: PathLike | None = None) -> Path:
    """The cache directory in use.

    Args:
        cache_dir: An explicit directory, else ``$MEGARAPTR_CACHE``, else
            ``~/.cache/megaraptr``.

    Returns:
        An absolute path (not created here).
    """
    chosen = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "megaraptr"
    return Path(chosen).expanduser().absolute()


def _stat(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(train: Sequence[Path], val: Sequence[Path], settings: dict) -> str:
    """Hashes input file identities and settings into a cache key.

    Args:
        train: Train input files (absolute).
        val: Val input files (absolute).
        settings: Everything else that changes the result.

    Returns:
        A 20-hex-digit key.
    """
    ident = {"train": [_stat(p) for p in train], "val": [_stat(p) for p in val],
             "settings": settings, "version": INDEX_VERSION}
    if any(p.name.lower().endswith(".txt") for p in (*train, *val)):
        # .txt files longer than this became several documents: entries made before are stale
        ident["txt_doc_chars"] = TXT_DOC_CHARS
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def prepare_cached(inputs: PathLike | Sequence[PathLike], *, kind: str, vocab_size: int = 8192,
                   tokenizer_file: PathLike | None = None,
                   val_inputs: PathLike | Sequence[PathLike] | None = None,
                   cache_dir: PathLike | None = None,
                   val_fraction: float = 0.01) -> PreparedData:
    """Prepares raw inputs into the cache, or loads the entry prepared earlier.

    Args:
        inputs: Raw inputs, as for ``prepare``.
        kind: ``"mlm"`` or ``"causal"``.
        vocab_size: Vocabulary size of the trained tokenizer.
        tokenizer_file: A ``tokenizer.json`` to use instead of training one.
        val_inputs: Val inputs, as for ``prepare``.
        cache_dir: Cache directory (default ``$MEGARAPTR_CACHE`` or ``~/.cache/megaraptr``).
        val_fraction: Hold-out fraction, as for ``prepare``.

    Returns:
        The prepared data, in the cache.

    Raises:
        DataError: An input is missing or bad, or the cache is not writable.
    """
    check_settings(kind, vocab_size)
    files = resolve_inputs(inputs, val_inputs)
    tok_path = None
    if tokenizer_file is not None:
        tok_path = Path(tokenizer_file).expanduser().absolute()
        if not tok_path.is_file():
            raise DataError(f"data: {tok_path}: no such tokenizer file")
    settings = {"kind": kind, "vocab_size": vocab_size, "val_fraction": val_fraction,
                "tokenizer": None if tok_path is None else _stat(tok_path)}
    root = cache_root(cache_dir) / "prepared"
    final = root / f"{kind}-{vocab_size}-{cache_key(files.train, files.val, settings)}"
    if (final / INDEX_NAME).is_file():
        return load_prepared(final)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{final.name}.lock", "a+")
    except OSError as err:
        raise DataError(f"data: cache {root}: cannot write ({err.strerror}); set "
                        f"{CACHE_ENV} to a writable directory") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (final / INDEX_NAME).is_file():
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
                try:
                    prepare_files(files, tmp, kind=kind, vocab_size=vocab_size,
                                  tokenizer_file=tok_path, val_fraction=val_fraction)
                    if final.exists():  # an incomplete entry left by an older crash
                        shutil.rmtree(final)
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return load_prepared(final)
