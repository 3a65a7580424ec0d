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
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

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
