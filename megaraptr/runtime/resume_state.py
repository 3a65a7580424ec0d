"""megaraptr's share of a DeepSpeed checkpoint: ``client_state["raptr"]``.

The step's subnetwork needs nothing saved (it is a function of seed and step, and DeepSpeed
restores ``global_steps``). What the step cannot give is the run's history and identity:

- ``digest`` and ``active_layer_steps``: the running hash of the subnetworks actually
  trained and the layers that ran, so a resumed run reports the whole run's digest and
  layer-FLOPs fraction;
- ``seed`` and ``schedule`` (fingerprint and description): a resume under a different
  schedule, seed or run length is refused unless the caller overrides it explicitly;
- ``guard``: the divergence guard's counts and running loss mean
  (:class:`megaraptr.runtime.divergence.DivergenceGuard`), so a resumed run drops and stops
  where the uninterrupted one would (absent in older checkpoints: a fresh guard);
- ``tensor_parallel`` (only when T > 1, so other checkpoints are unchanged): each rank's files
  hold its shards, so a resume under another T is refused.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Optional

from megaraptr.errors import CheckpointError
from megaraptr.runtime.tp.setup import tensor_size

VERSION = 1


def describe(schedule, seed: int) -> str:
    probs = "-".join(f"{s.keep_prob:.3g}" for s in schedule.stages)
    return (f"{len(schedule.stages)} stage(s) keep_prob {probs}, {schedule.sampling} sampling, "
            f"{schedule.total_steps} steps, seed {seed}")


def raptr_state(engine) -> dict:
    """The dict saved under ``client_state["raptr"]``."""
    state = {
        "version": VERSION,
        "applied_steps": engine.applied_steps,
        "seed": engine.seed,
        "schedule_fingerprint": engine.schedule.fingerprint(),
        "schedule": describe(engine.schedule, engine.seed),
        "digest": engine.digest.hexdigest,
        "active_layer_steps": engine.active_layer_steps,
        "config": engine.config.model_dump(),
        "guard": engine.guard.state(),
        "pipeline": None if not getattr(engine, "is_pipeline", False) else {
            "costs": dataclasses.asdict(engine.costs), "layer_parts": list(engine.layer_parts),
            "num_stages": engine.num_stages},
    }
    tensor = tensor_size(engine)
    if tensor > 1:
        state["tensor_parallel"] = tensor
    return state


def check_saved_tensor_parallel(state: Optional[dict], tensor: int, where: str) -> None:
    """Refuse a checkpoint written under another tensor-parallel size.

    Raises:
        CheckpointError: naming both sizes.
    """
    saved = (state or {}).get("tensor_parallel", 1)
    if saved != tensor:
        raise CheckpointError(f"{where} was written with tensor_parallel.autotp_size {saved}; "
                              f"this run has {tensor}: each rank's files hold its shards, so "
                              f"resume with autotp_size {saved}")


def find_checkpoint(load_dir: str, tag: Optional[str] = None) -> str:
    """The checkpoint folder that ``load_checkpoint(load_dir, tag)`` would read.

    Raises:
        CheckpointError: no such folder, or no 'latest' file and no tag.
    """
    if not os.path.isdir(load_dir):
        raise CheckpointError(f"--load {load_dir}: no such directory")
    if tag is None:
        latest = os.path.join(load_dir, "latest")
        if not os.path.isfile(latest):
            raise CheckpointError(f"--load {load_dir}: no DeepSpeed checkpoint there (no 'latest' "
                                  "file)")
        with open(latest) as f:
            tag = f.read().strip()
    path = os.path.join(load_dir, tag)
    if not os.path.isdir(path):
        raise CheckpointError(f"--load {load_dir}: checkpoint tag '{tag}' has no folder {path}")
    return path


def read_raptr_state(checkpoint_path: str, key: str = "raptr") -> Optional[dict]:
    """megaraptr's state from a checkpoint folder, read lazily (mmap) before any engine exists
    (``key``: another entry of the client state, e.g. the training loop's "train")."""
    import torch

    files = sorted(glob.glob(os.path.join(checkpoint_path, "mp_rank_*model_states.pt"))) or \
        sorted(glob.glob(os.path.join(checkpoint_path, "*model_states.pt")))  # not layer_XX-
    if not files:
        raise CheckpointError(f"{checkpoint_path}: no DeepSpeed model states file in it")
    try:
        states = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a truncated or foreign file: say which, in one line
        raise CheckpointError(f"{files[0]}: cannot be read ({type(err).__name__}: {err})") \
            from None
    return states.get(key)


def check_compatible(state: Optional[dict], schedule, seed: int, where: str,
                     override_schedule: bool) -> None:
    """Refuse a checkpoint trained under another schedule or seed, unless overridden.

    Raises:
        CheckpointError: naming both schedules and the override flag.
    """
    if state is None:
        if not override_schedule:
            raise CheckpointError(f"{where} holds no megaraptr state; resume it with the override "
                                  "flag (--override-raptr-schedule) to start a RAPTR history at "
                                  "its step")
        return
    if state.get("version") != VERSION:
        raise CheckpointError(f"{where}: megaraptr state version {state.get('version')}, this "
                              f"megaraptr reads version {VERSION}")
    same = state["schedule_fingerprint"] == schedule.fingerprint() and state["seed"] == seed
    if not same and not override_schedule:
        raise CheckpointError(
            f"{where} was trained with {state['schedule']}; this run has "
            f"{describe(schedule, seed)}. Resume with the same raptr block, seed and train "
            "steps, or pass --override-raptr-schedule")


def check_before_load(engine, load_dir: str, tag: Optional[str]) -> None:
    """What can be refused before DeepSpeed reads a checkpoint (another tensor-parallel size,
    whose shards would not fit); nothing when there is no checkpoint to read (DeepSpeed finds
    none either, and :func:`restore_raptr_state` says so)."""
    try:
        found = find_checkpoint(load_dir, tag)
    except CheckpointError:
        return
    check_saved_tensor_parallel(read_raptr_state(found), tensor_size(engine),
                          found)


def load(engine, load_dir: str, tag: Optional[str], override_schedule: bool, **kwargs):
    """``engine.ds.load_checkpoint`` between megaraptr's checks: what can be refused before
    DeepSpeed reads anything (:func:`check_before_load`), then the schedule and the run's
    history (:func:`restore_raptr_state`). Returns (path, client_state) like DeepSpeed."""
    check_before_load(engine, load_dir, tag)
    path, client_state = engine.ds.load_checkpoint(load_dir, tag=tag, **kwargs)
    restore_raptr_state(engine, path, client_state, override_schedule)
    return path, client_state


def restore_raptr_state(engine, path: Optional[str], client_state: Optional[dict],
                        override_schedule: bool) -> None:
    """Check the checkpoint's schedule against the engine's and restore the run's history.

    Raises:
        CheckpointError: nothing loaded; a checkpoint without megaraptr state; a different
            schedule or seed without ``override_schedule``.
    """
    if path is None:
        raise CheckpointError("no checkpoint was loaded (DeepSpeed found none)")
    state = (client_state or {}).get("raptr")
    check_compatible(state, engine.schedule, engine.seed, path, override_schedule)
    check_saved_tensor_parallel(state, tensor_size(engine), path)
    if state is None:
        return
    if state["applied_steps"] != engine.applied_steps:
        raise CheckpointError(f"{path}: megaraptr state is at step {state['applied_steps']} but "
                              f"DeepSpeed restored step {engine.applied_steps}")
    engine.digest.hexdigest = state["digest"]
    engine.active_layer_steps = int(state["active_layer_steps"])
    engine.guard.restore(state.get("guard"))
