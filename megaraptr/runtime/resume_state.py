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

Checkpoints also carry it in their manifest, so that it is read without unpickling anything
(:mod:`megaraptr.runtime.checkpoints`).
"""
from __future__ import annotations

import dataclasses
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
