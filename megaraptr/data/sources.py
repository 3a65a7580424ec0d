"""Raw text inputs: which files a set of paths names, and the documents they hold.

Accepted inputs:

* ``.txt`` files: running text with no document boundaries of its own. A file of at most
  ``TXT_DOC_CHARS`` (131,072) characters is one document; a longer one is cut into documents of
  at most that many characters, each ending at the last paragraph break (blank line) in the
  second half of its window, else the last line break there, else the last space there, else
  at the limit (so a document separator lands between paragraphs, and a corpus given as one
  ``.txt`` file has documents to hold out). The file is read ``TXT_DOC_CHARS`` characters at a
  time, so memory does not grow with the file or with its longest line.
* ``.jsonl`` / ``.jsonl.gz`` files: one JSON object per line with a string ``"text"`` field;
  each line is one document, never cut (a line is read whole, so memory grows with the longest
  line). Blank lines are skipped.
* A directory: every such file under it (recursively, sorted by path, hidden entries
  skipped). A directory laid out like the shared corpus, i.e. holding ``train.<ext>`` and
  ``val.<ext>`` files, contributes ``train.<ext>`` as train input and ``val.<ext>`` as val input
  (other files in it, such as ``test.<ext>``, are ignored).

Documents with empty (all-whitespace) text are skipped. A file named twice (directly or through
a directory) is refused. Every problem is a ``DataError`` with a one-line message naming the
file (and line, for JSON lines).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from megaraptr.errors import DataError

SUFFIXES = (".jsonl.gz", ".jsonl", ".txt")
TXT_DOC_CHARS = 1 << 17
_TXT_BREAKS = ("\n\n", "\n", " ")

PathLike = str | os.PathLike


@dataclass(frozen=True)
class InputFiles:
    """The files a prepare run reads.

    Attributes:
        train: Files whose documents are train data (or split by hash when ``val`` is empty).
        val: Files whose documents are val data; empty means "hold out by hash".
    """

    train: tuple[Path, ...]
    val: tuple[Path, ...]


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def _split_files(directory: Path) -> tuple[Path, Path] | None:
    """Returns (train file, val file) when ``directory`` is laid out like the shared corpus."""
    for suffix in SUFFIXES:
        train, val = directory / f"train{suffix}", directory / f"val{suffix}"
        if train.is_file() and val.is_file():
            return train, val
    return None


def _files_under(directory: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and _suffix(Path(f)) is not None]
    return sorted(found)


def _expand(path: PathLike, found_val: list[Path] | None) -> list[Path]:
    """Expands one input path to files; a corpus-style directory's val file goes to found_val."""
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise DataError(f"data: {p}: no such file or directory")
    if p.is_file():
        if _suffix(p) is None:
            raise DataError(f"data: {p}: unsupported file type (use .txt, .jsonl or .jsonl.gz)")
        return [p]
    if found_val is not None:
        pair = _split_files(p)
        if pair is not None:
            found_val.append(pair[1])
            return [pair[0]]
    files = _files_under(p)
    if not files:
        raise DataError(f"data: {p}: directory holds no .txt, .jsonl or .jsonl.gz files")
    return files


def _as_list(paths: PathLike | Sequence[PathLike] | None) -> list[PathLike]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def resolve_inputs(inputs: PathLike | Sequence[PathLike],
                   val_inputs: PathLike | Sequence[PathLike] | None = None) -> InputFiles:
    """Expands input paths to the train and val files they name.

    Args:
        inputs: Train input paths (files or directories).
        val_inputs: Explicit val input paths. When given, val files found in corpus-style
            directories among ``inputs`` are ignored.

    Returns:
        The files to read, each an absolute path.

    Raises:
        DataError: A path is missing, of an unsupported type, or no input was given.
    """
    train_paths, val_paths = _as_list(inputs), _as_list(val_inputs)
    if not train_paths:
        raise DataError("data: no input paths given")
    found_val: list[Path] = []
    train = [f for p in train_paths for f in _expand(p, found_val)]
    val = [f for p in val_paths for f in _expand(p, None)] if val_paths else found_val
    seen: set[Path] = set()
    for f in train + val:
        if f in seen:
            raise DataError(f"data: {f}: named twice among the inputs (directly or through a "
                            f"directory); give each file once")
        seen.add(f)
    return InputFiles(train=tuple(train), val=tuple(val))


def txt_cut(text: str, limit: int = TXT_DOC_CHARS) -> int:
    """Where a ``.txt`` document ends when ``text`` is longer than ``limit`` characters.

    Args:
        text: The text still to cut (longer than ``limit``).
        limit: Largest document, in characters.

    Returns:
        The document's length: just after the last paragraph break, else line break, else
        space in ``text[limit // 2:limit]``, else ``limit``.
    """
    for brk in _TXT_BREAKS:
        at = text.rfind(brk, limit // 2, limit)
        if at >= 0:
            return at + len(brk)
    return limit


def _txt_documents(path: Path, limit: int = TXT_DOC_CHARS) -> Iterator[str]:
    """Reads a ``.txt`` file ``limit`` characters at a time and yields its documents."""
    try:
        with open(path, encoding="utf-8") as f:  # universal newlines, as Path.read_text
            rest = ""
            while True:
                block = f.read(limit)
                rest += block
                while len(rest) > limit:
                    end = txt_cut(rest, limit)
                    yield rest[:end]
                    rest = rest[end:]
                if not block:
                    break
            if rest:
                yield rest
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"data: {path}: cannot read ({err})") from None


def _jsonl_documents(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"data: {path} line {lineno}: malformed JSON ({err.msg})") \
                        from None
                if not isinstance(record, dict) or "text" not in record:
                    raise DataError(f"data: {path} line {lineno}: no \"text\" field")
                text = record["text"]
                if not isinstance(text, str):
                    raise DataError(f"data: {path} line {lineno}: \"text\" is "
                                    f"{type(text).__name__}, not a string")
                yield text
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"data: {path}: cannot read ({err})") from None


def iter_documents(files: Sequence[Path]) -> Iterator[str]:
    """Yields the non-empty documents of ``files``, in order.

    Args:
        files: Files from ``resolve_inputs``.

    Yields:
        Each document's text.

    Raises:
        DataError: A file is unreadable or malformed.
    """
    for path in files:
        texts = _txt_documents(path) if _suffix(path) == ".txt" else _jsonl_documents(path)
        for text in texts:
            if text.strip():
                yield text


def describe(files: Sequence[Path]) -> str:
    """Names a list of files briefly, for messages.

    Args:
        files: Files to name.

    Returns:
        ``"/a/x.jsonl"`` or ``"/a/x.jsonl and 3 more files"``.
    """
    if not files:
        return "(no files)"
    more = len(files) - 1
    return str(files[0]) + (f" and {more} more file{'s' if more > 1 else ''}" if more else "")
