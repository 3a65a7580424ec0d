"""Moving a pipeline run to another layer partition: a checkpoint written under the old
partition and read under the new one, weights, optimizer state and position intact.

DeepSpeed fixes a ``PipelineModule``'s partition at construction and cannot load its optimizer
checkpoint into another partition. megaraptr's pipeline checkpoints therefore hold, besides
DeepSpeed's own files (layer weights named by global layer index, LR scheduler, step counters,
``client_state``), one file per pipeline stage with every parameter's fp32 master, Adam moments
and step count by name (:mod:`megaraptr.runtime.pipe.optim_state`), and they are always read that way:

1. :func:`save` writes DeepSpeed's checkpoint and ``raptr_optim_pp<stage>.pt`` (data-parallel
   rank 0 of each stage; under tensor parallelism one file per shard,
   ``raptr_optim_pp<stage>-tp<tensor rank>.pt``, read back by the same tensor rank), as one
   complete checkpoint of :func:`megaraptr.runtime.checkpoints.save` (staged, verified,
   manifest, ``latest``);
2. :func:`load` lets DeepSpeed read the weights and counters without its optimizer files
   (``load_optimizer_states=False``) and imports the optimizer state of the parameters this
   stage now holds, whichever stage wrote them.

:func:`repartition` is both, around building the engine of the new partition. The data
position needs no file: the batches of a step are a function of the applied step. Resuming a
run (``--load``) goes through the same :func:`load`, so every resume tests this path.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Optional

import torch

from megaraptr.runtime import checkpoints, resume_state
from megaraptr.runtime.checkpoints import safe_load
from megaraptr.runtime.pipe import optim_state

PREFIX = "raptr_optim_pp"
_NAME = re.compile(PREFIX + r"(\d+)(?:-tp(\d+))?\.pt")


def _tensor_rank(engine):
    """This rank's tensor-parallel index, or None without tensor parallelism."""
    return engine.tp.tensor_index if getattr(engine, "tp", None) is not None else None


def _shard_of(name: str) -> Optional[int]:
    shard = _NAME.fullmatch(name).group(2)
    return None if shard is None else int(shard)


def state_file(stage: int, tensor_rank: Optional[int]) -> str:
    """The name of one stage's (and shard's) optimizer-state file."""
    return f"{PREFIX}{stage:02d}" + ("" if tensor_rank is None else f"-tp{tensor_rank:02d}") \
        + ".pt"


def save(engine, save_dir: str, tag: str, client_state: Optional[dict] = None, *,
         run: Optional[dict] = None, keep: int = 0) -> str:
    """Write the complete checkpoint ``save_dir/tag`` of a pipeline engine and move
    ``latest`` to it (``keep``: retention; ``run``: facts for the manifest); returns its
    folder."""
    return checkpoints.save(engine, save_dir, tag, client_state, write=_write, run=run,
                            keep=keep)


def _write(engine, save_dir: str, tag: str, client_state: Optional[dict]) -> None:
    """DeepSpeed's pipeline checkpoint and each stage's optimizer state by parameter name."""
    from deepspeed import comm as dist

    state = dict(client_state or {}, raptr=resume_state.raptr_state(engine))
    engine.ds.save_checkpoint(save_dir, tag=tag, client_state=state, save_latest=False)
    exported = optim_state.export_state(engine.ds)  # collective within each stage's DP group
    if engine.ds.grid.data_parallel_id == 0:
        path = os.path.join(save_dir, tag, state_file(engine.ds.stage_id, _tensor_rank(engine)))
        engine.checkpoint_io.guard(torch.save, path_arg=1)(exported, path)
    dist.barrier()


def read_saved_state(folder: str, tensor_rank: Optional[int] = None) -> dict:
    """The per-parameter optimizer state of every stage in a checkpoint folder (under tensor
    parallelism: of every stage's shard ``tensor_rank``)."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    files = sorted(os.path.join(folder, n) for n in names
                   if _NAME.fullmatch(n) and _shard_of(n) == tensor_rank)
    if not files:
        raise FileNotFoundError(f"{folder} holds no {PREFIX}*.pt: not a megaraptr pipeline "
                                "checkpoint")
    saved = {}
    for path in files:
        saved.update(safe_load.load(path, mmap=True))
    return saved


def load(engine, load_dir: str, tag: Optional[str] = None, *, verify: bool = True, **kwargs):
    """Read a pipeline checkpoint into ``engine`` (any partition); returns (path, client_state)
    (``verify=False``: a checkpoint this process has just written and verified)."""
    path, client_state = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=False,
                                                verify=verify, **kwargs)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    optim_state.import_state(engine.ds, read_saved_state(folder, _tensor_rank(engine)))
    return path, client_state


def repartition(engine, build: Callable, save_dir: str, *,
                client_state: Optional[dict] = None, run: Optional[dict] = None, keep: int = 0):
    """Move ``engine`` to its next planned partition; returns (new engine, client_state).

    Args:
        engine: a :class:`megaraptr.runtime.pipe.engine.RaptrPipelineEngine` whose
            ``needs_repartition()`` names the new partition.
        build: ``build(layer_parts) -> engine``, making the engine of a partition.
        save_dir: where the hand-over checkpoint goes (tag ``repartition-step<N>``).
        client_state: saved with it and returned (e.g. the training loop's history).
        run, keep: the manifest's run facts and the retention of :func:`save`.
    """
    parts = engine.needs_repartition()
    if parts is None:
        return engine, client_state
    tag = f"repartition-step{engine.applied_steps}"
    save(engine, save_dir, tag, client_state, run=run, keep=keep)
    engine.ds.destroy() if hasattr(engine.ds, "destroy") else None
    del engine
    new = build(parts)
    _, client_state = load(new, save_dir, tag, verify=False)
    return new, client_state
