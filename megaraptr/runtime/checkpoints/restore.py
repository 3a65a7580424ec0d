"""Loading a chosen checkpoint into an engine (:class:`megaraptr.runtime.checkpoints.resolve.
Resume`), in one line when it cannot be.

The same data-parallel size: DeepSpeed's own load (every file read through the safe loader).
Another data-parallel size: ZeRO-0 loads as it is (nothing is partitioned); ZeRO-1/2 loads the
weights through DeepSpeed and the optimizer state through :mod:`.reshard`; ZeRO-3 is refused
(its partitions are not re-split here; resume on the saved number of processes). Whether the
global batch is kept is the caller's check (``megaraptr-train`` adjusts the accumulation).
"""
from __future__ import annotations

from typing import Optional

from megaraptr.errors import CheckpointError, MegaraptrError
from megaraptr.runtime import compat, resume_state
from megaraptr.runtime.checkpoints import reshard, store
from megaraptr.runtime.checkpoints.resolve import Resume, resolve
from megaraptr.runtime.pipe import optim_state
from megaraptr.runtime.tp.setup import tensor_size


def load_engine(engine, load_dir: str, tag: Optional[str] = None, *,
                override_schedule: bool = False, verify: bool = True, **kwargs):
    """``RaptrEngine.load_checkpoint``: resolve the checkpoint (``tag``, or what ``latest``
    names, verified on all ranks, else the newest complete one; ``verify=False``: trust the
    manifest), load it and megaraptr's state (a different schedule refused unless
    ``override_schedule``). Returns DeepSpeed's (path, client_state)."""
    resume = resolve(load_dir, tag, verify="collective" if verify else "none")
    for note in resume.notes if verify else ():
        store.warn(note)
    resume_state.check_saved_tensor_parallel(resume.state(), tensor_size(engine), resume.path)
    path, client_state = load(engine, resume, **kwargs)  # another T refused before DeepSpeed
    resume_state.restore_raptr_state(engine, path, client_state, override_schedule)
    return path, client_state


def load(engine, resume: Resume, **kwargs):
    """Load ``resume`` into ``engine`` (a RaptrEngine); returns DeepSpeed's (path,
    client_state).

    Raises:
        CheckpointError: one line, naming the checkpoint and DeepSpeed's first line.
    """
    saved = resume.facts().get("data_parallel_size")
    if saved and saved != engine.data_parallel_size and not engine.is_pipeline:
        if engine.zero_stage == 3:
            raise CheckpointError(f"{resume.path} was saved by {saved} data-parallel processes "
                                  f"under ZeRO-3; this run has {engine.data_parallel_size}: "
                                  f"resume it on {saved}")
        if engine.zero_stage in (1, 2) and kwargs.pop("load_optimizer_states", True):
            compat.require(engine.deepspeed_patches, "zero12_reshard")
            state = reshard.read_zero12(resume.path)
            path, client_state = _deepspeed_load(engine, resume, load_optimizer_states=False,
                                                 **kwargs)
            named = [(n, p) for n, p in engine.ds.module.named_parameters() if p.requires_grad]
            optim_state.import_state(engine.ds, reshard.shape_like(state, named))
            return path, client_state
    return _deepspeed_load(engine, resume, **kwargs)


def _deepspeed_load(engine, resume: Resume, **kwargs):
    try:
        path, client_state = engine.ds.load_checkpoint(resume.load_dir, tag=resume.tag, **kwargs)
    except MegaraptrError:
        raise
    except Exception as err:  # noqa: BLE001 (DeepSpeed raises whatever its readers raise)
        text = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{resume.path} cannot be loaded into this run "
                              f"({type(err).__name__}: {text})") from None
    if path is None:
        raise CheckpointError(f"{resume.path}: DeepSpeed found no checkpoint in it")
    return path, client_state
