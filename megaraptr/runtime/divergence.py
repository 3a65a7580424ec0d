"""The step's one reduction over all ranks, and the divergence guard (``raptr.on_nonfinite``).

Every training step ends in :func:`reduce_step`: one all-reduce of a few float64 numbers over
every rank of the job (all pipeline stages included): this rank's mean loss, whether it is not
finite here, and the caller's votes (:mod:`megaraptr.tools.run_control`: a signal, a dead
launcher, a save that is due). The sums are the same on every rank, so every decision taken
from them (stop, drop the update, save) is taken after the same step everywhere, with no
further communication.

:class:`DivergenceGuard` decides what a diverged step does: one whose loss is not finite on some
rank or (except under fp16, whose loss scaler owns overflows) whose gradient norm is not, or,
when ``loss_spike_factor`` is set, whose loss exceeds that many times its running mean.

- ``"stop"`` (default): :class:`megaraptr.errors.DivergenceError` on every rank after the
  step; the caller saves nothing from then on. The reduction runs after the optimizer step.
- ``"skip_step"``: the reduction runs before the optimizer step, so every rank knows the loss
  before the update. A diverged step's update is dropped: DeepSpeed drops it itself when the
  gradient norm is invalid (ZeRO-1/2/3 and the bf16 optimizer check it; megaraptr then takes
  the skip out of DeepSpeed's ``skipped_steps`` and steps the LR scheduler as an applied step
  would), and :meth:`DivergenceGuard.install` makes the torch optimizer's ``step`` return
  without touching weights or state when the loss decided it (also ZeRO-0 fp32, where
  DeepSpeed computes no norm). So a dropped step still moves the schedule's clock
  (``global_steps - skipped_steps``) and the LR schedule, and the next step trains the next
  batch on the next subnetwork: the same as resuming right after it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from megaraptr.core.config import RaptrConfig
from megaraptr.errors import DivergenceError


@dataclass(frozen=True)
class StepReduction:
    """The sums of one step's reduction, the same on every rank."""

    mean_loss: float
    """Mean of the ranks' losses (not finite when any is not)."""
    nonfinite_ranks: int
    """Ranks whose loss was not finite."""
    world: int
    votes: Tuple[float, ...]
    """Each caller vote summed over the ranks (a count of ranks for 0/1 votes)."""
    local_loss: float = float("nan")
    """This rank's own loss."""


def reduce_step(local_loss, votes: Sequence[float], device) -> StepReduction:
    """One all-reduce over every rank of the job: this rank's loss (a float, or a 0-d tensor
    left on the device until here), its finiteness, ``votes``; the step's one host sync."""
    from deepspeed import comm as dist

    loss = torch.as_tensor(local_loss, device=device).detach().to(torch.float64).reshape(1)
    extra = torch.tensor(list(votes), dtype=torch.float64, device=device)
    values = torch.cat([loss, (~torch.isfinite(loss)).to(torch.float64), extra])
    dist.all_reduce(values)  # default group: every rank, every pipeline stage
    world = dist.get_world_size()
    *total, local = torch.cat([values, loss]).tolist()  # one device-to-host read
    return StepReduction(total[0] / world, int(total[1]), world, tuple(total[2:]), local)


def _finite(value) -> bool:
    return value is None or math.isfinite(float(value))


def weights_finite(module: torch.nn.Module, device) -> bool:
    """Whether every weight of ``module`` is finite on every rank (one all-reduce over all
    ranks; ZeRO-3: each rank checks its own partitions)."""
    from deepspeed import comm as dist

    tensors = [p.ds_tensor if hasattr(p, "ds_tensor") else p for p in module.parameters()]
    tensors = [t.detach() for t in tensors if t.numel()]
    bad = torch.zeros(1, dtype=torch.float64, device=device)
    if tensors:  # fp64 norms: no overflow for any finite fp32/bf16/fp16 value
        norms = torch._foreach_norm(tensors, 2, dtype=torch.float64)
        bad += (~torch.isfinite(torch.stack(norms))).sum()
    dist.all_reduce(bad)
    return float(bad) == 0.0


class DivergenceGuard:
    """What a diverged step does (the ``on_nonfinite`` keys of the raptr block); its state
    (consecutive and total dropped steps, the spike check's running mean) travels in
    checkpoints so that a resumed run decides as the uninterrupted one."""

    def __init__(self, config: RaptrConfig, *, fp16: bool):
        self.mode = config.on_nonfinite
        self.max_skips = config.max_consecutive_skips
        self.spike_factor = config.loss_spike_factor
        self.spike_window = config.loss_spike_window
        self.fp16 = fp16
        self.consecutive = 0
        """Diverged steps dropped in a row up to now."""
        self.dropped = 0
        """Diverged steps dropped over the whole run."""
        self.loss_mean = 0.0
        self.loss_count = 0
        """Running mean of the applied steps' losses, and how many it holds (at most the
        window)."""
        self._reason: Optional[str] = None  # set before the update under "skip_step"
        self.blocked = False
        """Whether the installed gate kept the torch optimizer from stepping this step."""

    @property
    def decides_before_update(self) -> bool:
        """Whether the step's reduction must run before the optimizer step ("skip_step")."""
        return self.mode == "skip_step"

    def install(self, optimizer) -> None:
        """Gate the torch optimizer's ``step`` (the one DeepSpeed's wrappers call last): on a
        step the loss decided to drop it returns without touching weights or state."""
        inner = optimizer.step

        def step(*args, **kwargs):
            if self._reason is not None:
                self.blocked = True
                return None
            return inner(*args, **kwargs)
        optimizer.step = step

    def loss_verdict(self, reduced: StepReduction) -> Optional[str]:
        """Why the step's loss makes it diverged, or None."""
        if reduced.nonfinite_ranks:
            return (f"non-finite training loss ({reduced.mean_loss}) on "
                    f"{reduced.nonfinite_ranks} of {reduced.world} rank(s)")
        if self.spike_factor is not None and self.loss_count >= self.spike_window and \
                reduced.mean_loss > self.spike_factor * self.loss_mean:
            return (f"loss spike: {reduced.mean_loss:.6g} is more than {self.spike_factor:g} x "
                    f"the running mean {self.loss_mean:.6g} (raptr.loss_spike_factor)")
        return None

    def before_update(self, reduced: StepReduction) -> None:
        """Under "skip_step", with the step's reduction in hand before the optimizer runs."""
        self._reason = self.loss_verdict(reduced)
        self.blocked = False

    def after_update(self, step: int, reduced: StepReduction, *, ds_skipped: bool,
                     grad_norm) -> bool:
        """Judge step ``step`` once DeepSpeed has run it; returns whether its update was dropped.

        Args:
            ds_skipped: DeepSpeed counted the step in ``skipped_steps`` (no update applied).
            grad_norm: ``engine.get_global_grad_norm()`` (None where DeepSpeed computes none).

        Raises:
            DivergenceError: "stop" and a diverged step; "skip_step" and too many in a row,
                or a diverged step whose update was applied anyway.
        """
        if self.decides_before_update:
            reason, blocked = self._reason, self.blocked
            self._reason, self.blocked = None, False
        else:
            reason, blocked = self.loss_verdict(reduced), False
        if reason is None and not self.fp16:  # fp16: an invalid norm is the loss scaler's
            if ds_skipped:
                reason = "non-finite gradient norm (DeepSpeed skipped the update)"
            elif not _finite(grad_norm):
                reason = f"non-finite gradient norm ({float(grad_norm)})"
        if reason is None:
            self.consecutive = 0
            if not ds_skipped:  # an fp16 overflow's retry is not a loss of the run
                self.loss_count = min(self.loss_count + 1, self.spike_window)
                self.loss_mean += (reduced.mean_loss - self.loss_mean) / self.loss_count
            return False
        if self.mode == "stop":
            raise DivergenceError(f"step {step}: {reason}; stopped before anything of this step "
                                  'was saved (raptr.on_nonfinite "stop")')
        if not (ds_skipped or blocked):
            raise DivergenceError(
                f"step {step}: {reason}, and the update was applied (DeepSpeed does not check "
                'the gradient norm here: set "bf16": {"check_grad_overflow": true}); stopped '
                "before anything of this step was saved")
        self.consecutive += 1
        self.dropped += 1
        if self.consecutive > self.max_skips:
            raise DivergenceError(
                f"step {step}: {reason}; {self.consecutive} diverged steps in a row "
                f"(raptr.max_consecutive_skips {self.max_skips}); stopped before anything of "
                "this step was saved")
        return True

    def judge(self, step: int, reduced: StepReduction, ds_engine, skipped_before: int) -> bool:
        """:meth:`after_update` for DeepSpeed engine ``ds_engine`` (``skipped_before``: its
        ``skipped_steps`` before the step). A dropped step that DeepSpeed counted as skipped
        counts as a step instead: the clock and the LR schedule move past it."""
        ds_skipped = ds_engine.skipped_steps > skipped_before
        dropped = self.after_update(step, reduced, ds_skipped=ds_skipped,
                                    grad_norm=ds_engine.get_global_grad_norm())
        if dropped and ds_skipped:
            ds_engine.skipped_steps -= 1
            if ds_engine.lr_scheduler is not None:
                ds_engine.lr_scheduler.step()  # as DeepSpeed steps it after an applied update
        return dropped

    def state(self) -> dict:
        return {"consecutive": self.consecutive, "dropped": self.dropped,
                "loss_mean": self.loss_mean, "loss_count": self.loss_count}

    def restore(self, state: Optional[dict]) -> None:
        for key, value in (state or {}).items():
            if key in self.state():
                setattr(self, key, value)
