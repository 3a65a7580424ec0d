"""TensorBoard (and csv/wandb) scalars through DeepSpeed's monitor: one batch per step.

The ds_config "tensorboard" block is the switch; DeepSpeed writes from rank 0 only and flushes
on every call, so each step sends all its scalars at once. Tags, all indexed by applied step:

=============================  ===========================================================
``train/loss``                 mean training loss of the step (all ranks)
``train/lr``                   learning rate of the first parameter group
``train/tokens_per_sec``       tokens of all ranks per second of wall-clock
``raptr/stage``                stage index (warmup, if any, is 0)
``raptr/keep_prob``            keep probability of the stochastic layers (PLD: theta)
``raptr/active_layers``        layers that ran this step
``raptr/layer_flops_fraction`` cumulative layer FLOPs relative to full-model training
``eval/loss``                  full-model held-out loss (at evaluation steps)
=============================  ===========================================================

``megaraptr-train`` writes them; in your own loop :class:`StepMonitor` does
(``megaraptr.StepMonitor``). DeepSpeed's own engine adds ``Train/Samples/lr`` (and, with
fp16, ``Train/Samples/loss_scale``), indexed by samples, not steps.
"""
from __future__ import annotations

import os
import time
from typing import List, Optional, Sequence, Tuple

Event = Tuple[str, float, int]


def tensorboard_dir(ds_config: dict) -> Optional[str]:
    """Where DeepSpeed writes TensorBoard events for this config, or None if disabled."""
    block = ds_config.get("tensorboard", {})
    if not block.get("enabled", False):
        return None
    return os.path.join(block.get("output_path", ""), block.get("job_name", "DeepSpeedJobName"))


def step_events(result, *, loss: float, lr: float, tokens_per_sec: float,
                layer_flops_fraction: float) -> List[Event]:
    """The scalars of one training step (``result``: a :class:`megaraptr.runtime.engine.StepResult`)."""
    step = result.step
    return [
        ("train/loss", loss, step),
        ("train/lr", lr, step),
        ("train/tokens_per_sec", tokens_per_sec, step),
        ("raptr/stage", float(result.stage.index), step),
        ("raptr/keep_prob", result.keep_prob, step),
        ("raptr/active_layers", float(result.mask.num_active), step),
        ("raptr/layer_flops_fraction", layer_flops_fraction, step),
    ]


def eval_events(step: int, loss: float) -> List[Event]:
    return [("eval/loss", loss, step)]


def write(engine, events: List[Event]) -> None:
    """Send ``events`` to the DeepSpeed engine's monitor (a no-op when monitoring is off)."""
    monitor = getattr(engine, "monitor", None)
    if events and monitor is not None and monitor.enabled:
        monitor.write_events(events)


def current_lr(engine) -> float:
    """The learning rate of the step just taken (the scheduler's, else the first group's)."""
    scheduler = engine.lr_scheduler
    return scheduler.get_last_lr()[0] if scheduler else engine.optimizer.param_groups[0]["lr"]


class StepMonitor:
    """The training command's TensorBoard scalars, for your own loop.

    ::

        monitor = megaraptr.StepMonitor(engine, tokens_per_step=micro * seq_len * ranks)
        for step in ...:
            result = engine.train_step(micro_batches)
            loss = monitor.step(result)        # train/* and raptr/*; the mean loss of all ranks
        monitor.eval(engine.applied_steps, engine.evaluate(val_batches))   # eval/loss

    Every rank calls :meth:`step` (it averages the loss over the data-parallel ranks, one
    all-reduce); DeepSpeed writes from rank 0 only, where the config has a "tensorboard"
    (or csv/wandb) block. Tokens per second are measured between calls unless ``seconds``
    is given.

    Args:
        engine: the :class:`~megaraptr.runtime.engine.RaptrEngine`.
        tokens_per_step: tokens of all ranks per optimizer step (0: no throughput scalar).
    """

    def __init__(self, engine, *, tokens_per_step: int = 0):
        self.engine, self.tokens_per_step = engine, tokens_per_step
        self._last = time.perf_counter()

    def step(self, result, *, seconds: Optional[float] = None,
             extra: Sequence[Event] = ()) -> float:
        """Write one step's scalars; returns its training loss averaged over the ranks."""
        now = time.perf_counter()
        elapsed = seconds if seconds is not None else now - self._last
        self._last = now
        loss = self.engine.mean_over_ranks(result.loss)
        tps = self.tokens_per_step / elapsed if self.tokens_per_step and elapsed > 0 else 0.0
        write(self.engine, step_events(result, loss=loss, lr=current_lr(self.engine),
                                       tokens_per_sec=tps,
                                       layer_flops_fraction=self.engine.layer_flops_fraction())
              + list(extra))
        return loss

    def eval(self, step: int, loss: float) -> None:
        """Write a full-model held-out loss (``engine.evaluate``) at applied step ``step``."""
        write(self.engine, eval_events(step, loss))
