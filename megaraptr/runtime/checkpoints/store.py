"""Writing complete checkpoints: staging, verification, the manifest, ``latest``, retention.

:func:`save` is the one way megaraptr writes a checkpoint (``RaptrEngine.save_checkpoint``,
the ZeRO and pipeline setups of ``megaraptr-train``, pipeline re-partitioning). On every rank:

1. the weights are finite on every rank (one all-reduce,
   :func:`megaraptr.runtime.divergence.weights_finite`), else
   :class:`megaraptr.errors.DivergenceError` (exit 3) on every rank and nothing is written:
   ``latest`` never names non-finite weights; then one gather: rank 0 has made a clean
   staging folder ``<save_dir>/.partial-<tag>``;
2. DeepSpeed writes its files (``save_latest=False``) into the staging folder; a write that
   fails on some rank (disk full, I/O error) is recorded there (:mod:`.engine_io`), so every
   rank finishes DeepSpeed's save and its barriers;
3. each rank fsyncs and hashes a share of the files; one gather tells every rank whether all
   writes succeeded;
4. rank 0 writes the manifest last, renames the folder to ``<tag>`` (replacing an older
   folder of the same tag only now), moves ``latest`` atomically (temporary name, fsync,
   rename) and applies retention; a broadcast tells every rank how that went.

A failure anywhere is :class:`megaraptr.errors.CheckpointWriteError` on every rank, with the
same line: the staging folder is removed, the previous checkpoint and ``latest`` are as they
were. Retention keeps the newest ``keep`` complete checkpoints (0: all); it runs on rank 0
after every rank has finished writing, never deletes the checkpoint ``latest`` names, and
removes staging leftovers of interrupted saves.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from typing import List, Optional

import torch

from megaraptr.errors import CheckpointError, CheckpointWriteError, DivergenceError
from megaraptr.runtime import resume_state
from megaraptr.runtime.checkpoints import manifest
from megaraptr.runtime.divergence import weights_finite

LATEST = "latest"
STAGING = ".partial-"
REPLACED = ".replaced-"
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,199}")


def valid_tag(tag: str) -> bool:
    """A checkpoint name that stays inside its folder: no separator, no leading dot."""
    return bool(_TAG.fullmatch(tag)) and tag != LATEST


def check_tag(tag: str) -> str:
    if not valid_tag(tag):
        raise CheckpointError(f"checkpoint tag {tag!r}: allowed: letters, digits and _.+=- "
                              "(no path separator, no leading dot, at most 200 characters)")
    return tag


def read_latest(save_dir: str) -> Optional[str]:
    """The tag ``<save_dir>/latest`` names (None: no such file).

    Raises:
        CheckpointError: it names something other than a folder inside ``save_dir``
            (``../x``, an absolute path, anything with a separator).
    """
    path = os.path.join(save_dir, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path, errors="replace") as f:
        tag = f.read(4096).strip()
    if not valid_tag(tag):
        raise CheckpointError(f"{path} names {tag[:80]!r}, not a checkpoint folder inside "
                              f"{save_dir}; allowed: a folder name without a path separator "
                              "(e.g. step20): write the tag to resume into it, or --load a "
                              "folder whose latest file megaraptr wrote")
    return tag


def write_latest(save_dir: str, tag: str) -> None:
    """Point ``latest`` at ``tag`` atomically (temporary name, fsync, rename, fsync folder)."""
    manifest.write_atomic(os.path.join(save_dir, LATEST), check_tag(tag))


def complete(save_dir: str) -> List[dict]:
    """Manifests of the complete checkpoints in ``save_dir``, newest first (by step, then save
    time); folders whose manifest is missing, unreadable or of another folder are left out."""
    found = []
    for name in sorted(os.listdir(save_dir)) if os.path.isdir(save_dir) else []:
        folder = os.path.join(save_dir, name)
        if not valid_tag(name) or not os.path.isdir(folder):
            continue
        try:
            content = manifest.read(folder)
        except CheckpointError:
            continue
        if content is not None and content.get("tag") == name:
            found.append(content)
    return sorted(found, key=lambda m: (m.get("step", -1), m.get("saved_at", 0.0)), reverse=True)


def warn(line: str) -> None:
    """Print a warning line on global rank 0 (stderr)."""
    if rank_world()[0] == 0:
        print(f"megaraptr: warning: {line}", file=sys.stderr, flush=True)


def rank_world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather(value) -> list:
    """``value`` of every rank, in rank order (one process: ``[value]``)."""
    rank, world = rank_world()
    if world == 1:
        return [value]
    out = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def from_rank0(value):
    rank, world = rank_world()
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def engine_facts(engine) -> dict:
    """What a resume must match or adapt to, as the engine runs now."""
    import deepspeed

    ds = engine.ds
    precision = "bf16" if ds.bfloat16_enabled() else "fp16" if ds.fp16_enabled() else "fp32"
    return {"world_size": rank_world()[1], "data_parallel_size": engine.data_parallel_size,
            "zero_stage": engine.zero_stage,
            "pipeline_stages": engine.num_stages if engine.is_pipeline else 0,
            "micro_batch": ds.train_micro_batch_size_per_gpu(),
            "grad_accum": ds.gradient_accumulation_steps(),
            "global_batch": ds.train_batch_size(), "precision": precision,
            "deepspeed": deepspeed.__version__}


def _deepspeed_write(engine, save_dir: str, tag: str, client_state: dict, **kwargs) -> None:
    state = dict(client_state or {}, raptr=resume_state.raptr_state(engine))
    engine.ds.save_checkpoint(save_dir, tag=tag, client_state=state, save_latest=False,
                              **kwargs)


def save(engine, save_dir: str, tag: Optional[str] = None, client_state: Optional[dict] = None,
         *, write=None, run: Optional[dict] = None, keep: int = 0, **kwargs) -> str:
    """Write the complete checkpoint ``<save_dir>/<tag>`` and point ``latest`` at it.

    Args:
        engine: a :class:`megaraptr.runtime.engine.RaptrEngine` (every rank calls).
        tag: the checkpoint's folder name (None: ``global_step<N>`` as DeepSpeed names it).
        write: ``write(engine, save_dir, staging_tag, client_state)`` writing the files
            (default: DeepSpeed's checkpoint with megaraptr's state; pipelines add theirs).
        run: facts of the run for the manifest (model, vocabulary, ...), checked on resume.
        keep: keep the newest ``keep`` complete checkpoints (0: keep all).
        kwargs: passed to DeepSpeed's ``save_checkpoint`` by the default writer.

    Returns:
        The checkpoint's folder.

    Raises:
        DivergenceError: on every rank, some weight is not finite: nothing is written.
        CheckpointWriteError: on every rank, one line; nothing of this save is left behind.
    """
    tag = check_tag(tag if tag is not None else f"global_step{engine.ds.global_steps}")
    kwargs.pop("save_latest", None)  # latest moves once the checkpoint is complete
    rank, world = rank_world()
    log = engine.checkpoint_io
    staging = os.path.join(save_dir, STAGING + tag)
    kept = _kept(save_dir)
    if not weights_finite(engine.ds.module, engine.ds.device):  # the same verdict on all ranks
        raise DivergenceError(f"step {engine.applied_steps}: non-finite weights; checkpoint "
                              f"{tag} not written")

    problem = None
    if rank == 0:
        try:
            os.makedirs(save_dir, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)  # an interrupted save's leftovers
            os.makedirs(staging)
        except OSError as err:
            problem = f"{staging}: {type(err).__name__}: {err.strerror or err}"
    _raise_first(gather(problem), tag, kept, staging)

    log.start()
    try:
        (write or _deepspeed_write)(engine, save_dir, STAGING + tag, client_state, **kwargs)
    finally:
        failure = log.stop()
    if world > 1:
        torch.distributed.barrier()  # every file of every rank is written
    files: dict = {}
    if failure is None:
        try:
            files = manifest.records(staging, manifest.list_files(staging)[rank::world],
                                     fsync=True)
        except OSError as err:
            failure = f"{type(err).__name__}: {err}"
    reports = gather((failure, files))
    _raise_first([f for f, _ in reports], tag, kept, staging)

    outcome = None
    if rank == 0:
        try:
            for _, share in reports:
                files.update(share)
            manifest.write(staging, {
                "tag": tag, "step": engine.applied_steps, "global_steps": engine.ds.global_steps,
                "saved_at": time.time(), "engine": engine_facts(engine), "run": dict(run or {}),
                "raptr": resume_state.raptr_state(engine), "files": files})
            _publish(save_dir, tag)
            write_latest(save_dir, tag)
        except OSError as err:
            outcome = f"rank 0: {type(err).__name__}: {err}"
            shutil.rmtree(staging, ignore_errors=True)
        else:
            try:
                prune(save_dir, keep)
            except OSError as err:  # the checkpoint is saved; old ones stay
                warn(f"retention in {save_dir} stopped: {type(err).__name__}: {err}")
    _raise_first([from_rank0(outcome)], tag, kept, staging)
    return os.path.join(save_dir, tag)


def _kept(save_dir: str) -> str:
    """What stays in place when a save fails (for its error line)."""
    try:
        before = read_latest(save_dir) if os.path.isdir(save_dir) else None
    except CheckpointError:
        before = None
    if before:
        return f"{os.path.join(save_dir, LATEST)} still names {before}"
    return f"{save_dir} has no latest checkpoint yet"


def _raise_first(problems: list, tag: str, kept: str, staging: str) -> None:
    """Raise the first rank's problem on every rank (rank 0 removes the staging folder)."""
    for rank, problem in enumerate(problems):
        if problem:
            if rank_world()[0] == 0:
                shutil.rmtree(staging, ignore_errors=True)
            where = f"rank {rank}: " if len(problems) > 1 and not problem.startswith("rank") \
                else ""
            raise CheckpointWriteError(f"checkpoint {tag} not saved ({where}{problem}); {kept}")


def _publish(save_dir: str, tag: str) -> None:
    """Rename the verified staging folder to ``tag`` (an older folder of that tag goes)."""
    final, old = os.path.join(save_dir, tag), os.path.join(save_dir, REPLACED + tag)
    if os.path.lexists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(os.path.join(save_dir, STAGING + tag), final)
    manifest.fsync_dir(save_dir)
    shutil.rmtree(old, ignore_errors=True)


def prune(save_dir: str, keep: int) -> List[str]:
    """Delete complete checkpoints beyond the ``keep`` saved last (never the one ``latest``
    names) and leftovers of interrupted saves; returns the tags deleted (rank 0 only)."""
    for name in os.listdir(save_dir):
        if name.startswith((STAGING, REPLACED)):
            shutil.rmtree(os.path.join(save_dir, name), ignore_errors=True)
    if keep <= 0:
        return []
    try:
        latest = read_latest(save_dir)
    except CheckpointError:
        return []  # a latest file megaraptr did not write: delete nothing
    by_save = sorted(complete(save_dir), key=lambda m: m.get("saved_at", 0.0), reverse=True)
    old = [m["tag"] for m in by_save[keep:] if m["tag"] != latest]  # newest saves kept: a
    # run resumed from an earlier step keeps its own, not those of the future it abandoned
    for tag in old:
        shutil.rmtree(os.path.join(save_dir, tag), ignore_errors=True)
    return old
