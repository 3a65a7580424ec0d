"""Choosing the checkpoint to resume: ``latest``, verification against the manifest, fallback.

:func:`resolve` starts from the tag ``<load_dir>/latest`` names (refused if it names anything
but a folder inside ``load_dir``) and verifies it: every file of its manifest present with its
size, and (``verify="checksums"``) with its sha256, no ``.pt`` file the manifest does not
list. A checkpoint that fails is reported in one line and the next newest complete one is
tried; none left is :class:`CheckpointError` (exit 2). ``verify="collective"`` splits the
hashing among the ranks of the process group and gathers the verdicts, so every rank reads a
share once and all take the same decision. A checkpoint written before manifests existed is
resumed only when ``latest`` names it, with its zip CRCs checked and a note that it is
unverified.

:func:`newest_complete` is the tag ``--load auto`` resumes (None: start a new run).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import zipfile
from typing import List, Optional, Tuple

from megaraptr.errors import CheckpointError
from megaraptr.runtime.checkpoints import manifest, safe_load, store

MODES = ("none", "sizes", "checksums", "collective")
STATE_KEY = "raptr"
"""megaraptr's entry of the client state (also in the manifest)."""


@dataclasses.dataclass(frozen=True)
class Resume:
    """The checkpoint a run resumes from."""

    load_dir: str
    tag: str
    manifest: Optional[dict]
    """Its manifest (None: written before manifests; unverified)."""
    notes: Tuple[str, ...] = ()
    """Warnings to print: checkpoints that failed verification, an unverified one."""
    requested: Optional[str] = None
    """The tag asked for (None: what ``latest`` names, with fallback)."""

    @property
    def path(self) -> str:
        return os.path.join(self.load_dir, self.tag)

    def facts(self) -> dict:
        """The engine's facts at save time (:func:`store.engine_facts`); for a checkpoint
        without manifest, what DeepSpeed's model states file says (data-parallel size)."""
        if self.manifest is not None:
            return dict(self.manifest.get("engine") or {})
        states = self.client_state()
        stage = ((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage")
        return {k: v for k, v in (("data_parallel_size", states.get("dp_world_size")),
                                  ("zero_stage", stage)) if v is not None}

    def run(self) -> dict:
        """The run's facts the caller recorded at save time (model, vocabulary, ...)."""
        return dict((self.manifest or {}).get("run") or {})

    def state(self, key: str = "raptr") -> Optional[dict]:
        """An entry of the saved client state: megaraptr's ("raptr") from the manifest, others
        from DeepSpeed's model states file (read safely, tensor data mapped lazily)."""
        if key == STATE_KEY and self.manifest is not None:
            return self.manifest.get("raptr")
        return self.client_state().get(key)

    def client_state(self) -> dict:
        files = sorted(glob.glob(os.path.join(self.path, "mp_rank_*model_states.pt"))) or \
            sorted(glob.glob(os.path.join(self.path, "*model_states.pt")))
        if not files:
            raise CheckpointError(f"{self.path}: no DeepSpeed model states file in it")
        states = safe_load.load(files[0], mmap=True)
        return states if isinstance(states, dict) else {}


def _legacy_problems(folder: str, names: List[str], share: List[str]) -> List[str]:
    if not any(n.endswith("model_states.pt") for n in names):
        return ["no DeepSpeed model states file in it"]
    out = []
    for name in share:
        path = os.path.join(folder, name)
        if not zipfile.is_zipfile(path):
            continue  # torch's legacy format has no CRC to check
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            bad = f"({type(err).__name__})"
        if bad is not None:
            out.append(f"{name}: zip CRC check failed at {bad} (corrupted)")
    return out


def _check(folder: str, verify: str) -> Tuple[Optional[str], Optional[dict]]:
    """(first problem or None, manifest) of one checkpoint folder."""
    rank, world = store.rank_world() if verify == "collective" else (0, 1)
    content, problems = None, []
    if not os.path.isdir(folder):
        problems = ["no such folder"]
    else:
        try:
            content = manifest.read(folder)
        except CheckpointError as err:
            problems = [str(err)]
    hashing = verify in ("checksums", "collective")
    if not problems and content is None:
        names = [n for n in manifest.list_files(folder) if n.endswith(".pt")]
        problems = _legacy_problems(folder, names, names[rank::world] if hashing else [])
    elif not problems:
        problems = manifest.structure_problems(folder, content)
        if hashing and not problems:
            problems = manifest.checksum_problems(folder, content,
                                                  sorted(content["files"])[rank::world])
    if verify == "collective":
        problems = sorted({p for share in store.gather(problems) for p in share})
    if not problems:
        return None, content
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more, content


def resolve(load_dir: str, tag: Optional[str] = None, *, verify: str = "checksums") -> Resume:
    """The checkpoint to resume in ``load_dir``: ``tag``, or what ``latest`` names with
    fallback to the newest complete one.

    Args:
        verify: "none" (read the manifest only), "sizes" (files present with their sizes),
            "checksums" (and their sha256), "collective" (checksums split among the ranks).

    Raises:
        CheckpointError: one line: no such folder, ``latest`` naming something outside it, a
            requested tag that fails verification, no complete checkpoint left.
    """
    assert verify in MODES, verify
    if not os.path.isdir(load_dir):
        raise CheckpointError(f"--load {load_dir}: no such directory")
    if tag is not None:
        candidates, named = [store.check_tag(tag)], tag
    else:
        named = store.read_latest(load_dir)
        newest = [m["tag"] for m in store.complete(load_dir)]
        if named is None and not newest:
            raise CheckpointError(f"--load {load_dir}: no DeepSpeed checkpoint there (no "
                                  "'latest' file)")
        candidates = ([named] if named else []) + [t for t in newest if t != named]
    failed: List[Tuple[str, str]] = []
    for candidate in candidates:
        problem, content = _check(os.path.join(load_dir, candidate), verify)
        if problem is None:
            return Resume(load_dir, candidate, content,
                          _notes(load_dir, candidate, failed, named, content), tag)
        failed.append((candidate, problem))
        if tag is not None:
            break
    detail = "; ".join(f"{t}: {p}" for t, p in failed)
    raise CheckpointError(f"--load {load_dir}: no complete checkpoint to resume ({detail})")


def _notes(load_dir: str, tag: str, failed, named, content) -> Tuple[str, ...]:
    path = os.path.join(load_dir, tag)
    notes = [f"{os.path.join(load_dir, t)} fails verification: {p}" for t, p in failed]
    if notes:
        notes[-1] += f"; resuming from {path}, the newest complete checkpoint"
    elif named is None:
        notes.append(f"{load_dir} has no 'latest' file; resuming from {path}, the newest "
                     "complete checkpoint")
    if content is None:
        notes.append(f"{path} has no manifest (written before megaraptr verified "
                     "checkpoints): its files cannot be checked against checksums")
    return tuple(notes)


def newest_complete(save_dir: str, *, verify: str = "checksums") -> Optional[str]:
    """The tag of the newest complete checkpoint in ``save_dir`` that passes verification,
    or None (no folder, none complete). ``--load auto`` resumes it."""
    if not os.path.isdir(save_dir):
        return None
    for content in store.complete(save_dir):
        problem, _ = _check(os.path.join(save_dir, content["tag"]), verify)
        if problem is None:
            return content["tag"]
    return None
