"""The manifest of a checkpoint: what it holds and the checksum of every file, written last.

``<tag>/megaraptr-manifest.json`` is plain JSON (read without unpickling anything)::

    {"format": 1, "tag": "step20", "step": 20, "saved_at": 1767139200.5,
     "engine": {"world_size": 2, "data_parallel_size": 2, "zero_stage": 2, ...},
     "run": {"model": "bert", "vocab_size": 8192, "seq_len": 128, ...},
     "raptr": {...client_state["raptr"]...},
     "files": {"mp_rank_00_model_states.pt": {"bytes": 22219007, "sha256": "..."}, ...}}

The store writes it after every rank's files are on disk and hashed (each rank hashes and
fsyncs a share), so a folder with a manifest is complete; :func:`problems` says what does not
match it (a missing, truncated or changed file, or a ``.pt`` file it does not list).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Iterable, List, Optional, Tuple

from megaraptr.errors import CheckpointError

NAME = "megaraptr-manifest.json"
FORMAT = 1
_CHUNK = 1 << 22


def hash_file(path: str, *, fsync: bool = False) -> Tuple[int, str]:
    """(bytes, sha256 hex) of a file; ``fsync``: flush it to stable storage first."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
        size = f.tell()
    return size, digest.hexdigest()


def list_files(folder: str) -> List[str]:
    """Every file under ``folder``, relative to it, sorted (the manifest not included)."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != NAME and not name.startswith(NAME):
                out.append(rel)
    return sorted(out)


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name: fsync, rename, fsync the folder."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write(folder: str, content: dict) -> None:
    """Write the manifest ``content`` (with ``"format"``) into ``folder``, atomically."""
    write_atomic(os.path.join(folder, NAME), json.dumps(dict(content, format=FORMAT), indent=1,
                                                        sort_keys=True))


def read(folder: str) -> Optional[dict]:
    """The manifest of ``folder``; None when it has none (a checkpoint written without one).

    Raises:
        CheckpointError: a manifest that is not one (unparseable, another format).
    """
    path = os.path.join(folder, NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({type(err).__name__})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT or \
            not isinstance(content.get("files"), dict):
        raise CheckpointError(f"{path}: not a megaraptr manifest of format {FORMAT}")
    return content


def structure_problems(folder: str, content: dict) -> List[str]:
    """What is missing, resized or unlisted in ``folder`` (no file is read)."""
    out = []
    for name, record in sorted(content["files"].items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            out.append(f"{name} is missing")
        elif os.path.getsize(path) != record.get("bytes"):
            out.append(f"{name} has {os.path.getsize(path)} bytes, the manifest {record['bytes']}")
    extra = [n for n in list_files(folder) if n.endswith(".pt") and n not in content["files"]]
    if extra:
        out.append(f"{', '.join(extra[:3])} not in the manifest")
    return out


def checksum_problems(folder: str, content: dict, names: Iterable[str]) -> List[str]:
    """Files among ``names`` whose sha256 differs from the manifest's (present ones only)."""
    out = []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue  # structure_problems says so
        try:
            _, digest = hash_file(path)
        except OSError as err:
            out.append(f"{name} cannot be read ({type(err).__name__})")
            continue
        if digest != content["files"][name].get("sha256"):
            out.append(f"{name}: sha256 differs from the manifest (changed or corrupted)")
    return out


def records(folder: str, names: Iterable[str], *, fsync: bool) -> Dict[str, dict]:
    """{name: {"bytes", "sha256"}} of files in ``folder`` (fsynced first when asked)."""
    out = {}
    for name in names:
        size, digest = hash_file(os.path.join(folder, name), fsync=fsync)
        out[name] = {"bytes": size, "sha256": digest}
    return out
