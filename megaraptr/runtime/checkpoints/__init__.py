"""Trustworthy checkpoints: safe to read, complete or absent, one writer per folder.

The public API (the training loop, the setups and ``megaraptr-config`` use these):

- :func:`save` (:mod:`.store`): write a complete checkpoint and move ``latest`` to it; a
  failed write is :class:`megaraptr.errors.CheckpointWriteError` (exit 74) on every rank,
  with the previous checkpoint and ``latest`` intact; ``keep`` applies retention.
- :func:`resolve` (:mod:`.resolve`): the checkpoint to resume (``latest``, verified, with
  fallback to the newest complete one), as a :class:`Resume`; :func:`newest_complete`: the
  tag ``--load auto`` resumes, or None.
- :func:`load` (:mod:`.restore`): load a :class:`Resume` into an engine (another data-parallel
  size under ZeRO-0/1/2 included); :func:`load_engine`: resolve, load and restore megaraptr's
  state (``RaptrEngine.load_checkpoint``).
- :class:`RunLock` (:mod:`.lock`): the one-writer lock on a ``--save`` folder; :func:`check_lock`
  for the ranks that do not hold it.
- :func:`safe_load.load <megaraptr.runtime.checkpoints.safe_load.load>`: read one checkpoint
  file without running code from it; :func:`engine_io.install` routes DeepSpeed's reads there.
"""
from megaraptr.runtime.checkpoints.lock import RunLock, check as check_lock
from megaraptr.runtime.checkpoints.resolve import Resume, newest_complete, resolve
from megaraptr.runtime.checkpoints.restore import load, load_engine
from megaraptr.runtime.checkpoints.store import (LATEST, complete, engine_facts, prune, read_latest,
                                                 save, warn)

__all__ = ["LATEST", "Resume", "RunLock", "check_lock", "complete", "engine_facts", "load",
           "load_engine", "newest_complete", "prune", "read_latest", "resolve", "save", "warn"]
