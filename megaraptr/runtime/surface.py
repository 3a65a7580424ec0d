"""Which DeepSpeed engine attributes a :class:`megaraptr.runtime.engine.RaptrEngine` passes on.

A RaptrEngine wraps a DeepSpeed engine (``engine.ds``). Forwarding every attribute to it
would let ``engine.step()`` or ``engine.backward(loss)`` run DeepSpeed's step without
megaraptr's: no subnetwork for the step, a schedule clock that moves without the digest, and
(under ZeRO-3) stale gradients applied again. So the wrapper forwards an explicit list:

- :data:`FORWARDED`: state and queries that cannot change what trains (``module``,
  ``global_steps``, ``monitor``, ``optimizer``, ``lr_scheduler``, ``device``, the batch sizes,
  the precision and ZeRO queries, ...), the mode switches ``train``/``eval`` (every step and
  every evaluation sets its own mode), and ``destroy``;
- :data:`BYPASS`: the calls that would train or run the model outside ``train_step``
  (``step``, ``backward``, ``forward``, and ``train_batch`` on the non-pipeline engine, where
  DeepSpeed has none): each raises :class:`EngineUsageError` with one line naming
  ``train_step``;
- anything else raises ``AttributeError`` in one line pointing at ``engine.ds``, the
  DeepSpeed engine itself, for deliberate use of what is not listed here.

The engine's own ``save_checkpoint``, ``load_checkpoint``, ``evaluate`` and ``__call__`` are
methods of RaptrEngine, not forwarded names.
"""
from __future__ import annotations

from megaraptr.errors import EngineUsageError

FORWARDED = frozenset({
    # state (read): the wrapped module, the step counters, services the loop reports through
    "module", "global_steps", "global_samples", "skipped_steps", "monitor", "optimizer",
    "basic_optimizer", "lr_scheduler", "device", "local_rank", "global_rank", "world_size",
    "dp_world_size", "data_parallel_group", "training",
    # queries (no side effects)
    "gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "train_batch_size",
    "zero_optimization_stage", "fp16_enabled", "bfloat16_enabled", "get_global_grad_norm",
    "get_lr", "parameters", "named_parameters",
    # pipeline engines: the grid and this rank's place in it
    "grid", "stage_id", "micro_batches", "is_first_stage", "is_last_stage",
    # mode switches (train_step and evaluate set the mode they need) and teardown
    "train", "eval", "destroy",
})
"""DeepSpeed engine attributes that ``engine.<name>`` reads from ``engine.ds``."""

_TRAIN = "engine.train_step(micro_batches) trains one step on its subnetwork"
BYPASS = {
    "step": f"DeepSpeed's optimizer step without the step's subnetwork; {_TRAIN}",
    "backward": f"DeepSpeed's backward outside the step's subnetwork; {_TRAIN}",
    "forward": f"a forward pass outside train_step's subnetwork; {_TRAIN}, engine(**batch) "
               "or engine.evaluate(batches) evaluates the full model",
    "train_batch": f"the non-pipeline engine has no train_batch; {_TRAIN}",
}
"""DeepSpeed calls that would bypass the step's subnetwork, and what to call instead."""


def forwarded(ds_engine, owner: str, name: str):
    """``ds_engine.<name>`` when :data:`FORWARDED` lists it; otherwise the one-line error.

    Args:
        ds_engine: the wrapped DeepSpeed engine (None while the wrapper is being built or
            unpickled: every name is then missing).
        owner: the wrapper's class name, for the message.
        name: the attribute asked for.
    """
    if name in BYPASS:
        raise EngineUsageError(f"{owner}.{name}: not forwarded to DeepSpeed, it would bypass "
                               f"the step's subnetwork ({BYPASS[name]})")
    if name in FORWARDED and ds_engine is not None:
        return getattr(ds_engine, name)
    raise AttributeError(f"{owner!r} object has no attribute {name!r} (DeepSpeed's engine is "
                         f"engine.ds; forwarded names: megaraptr.runtime.surface.FORWARDED)")
