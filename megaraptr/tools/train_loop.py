"""The training loop of ``megaraptr-train``: steps, evaluations and checkpoints.

:class:`TrainLoop` runs a built :class:`megaraptr.tools.train_setup.TrainSetup` from its
engine's applied step to ``--exit-at-step`` or ``--train-steps``: each step seeds torch from
(--seed, step, rank) so dropout is a function of the step, trains on the step's subnetwork,
logs the step's scalars, evaluates every ``--eval-interval`` steps and saves every
``--save-interval`` steps, when ``--save-every-minutes`` has passed, and at the end. The
step's votes (:mod:`megaraptr.tools.run_control`: a stop signal, a dead launcher, a timed save)
ride in its one all-reduce; a stop agreed there ends the session after that step, its due
evaluation and its checkpoint. :class:`History` is what a checkpoint carries under
``client_state["train"]``, so a resumed run continues its clock and eval history.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
import sys
import time
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from megaraptr.runtime import monitor
from megaraptr.tools.extra_eval import ExtraEvals
from megaraptr.tools.preflight import RunPlan
from megaraptr.tools.run_control import RunControl
from megaraptr.tools.train_log import resolve_log_interval, step_line
from megaraptr.tools.train_setup import TrainSetup


def run_seed(seed: int, step: int, rank: int) -> int:
    """torch's seed for one rank's step, so dropout is a function of (seed, step, rank)."""
    key = struct.pack("<QQQ", seed, step, rank)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def to_device(batches: List[dict], device, inputs=None) -> List[dict]:
    """Batches on ``device``; ``inputs`` maps each to the model's keyword arguments."""
    moved = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batches]
    return [inputs(b) for b in moved] if inputs else moved


class _Bar(tqdm):
    """The progress bar, without tqdm's monitor thread (a daemon thread that only adjusts
    ``miniters``; one thread fewer that could run garbage collection as the run exits)."""

    monitor_interval = 0


@dataclasses.dataclass
class History:
    """The run's record across sessions (saved in checkpoints as ``client_state["train"]``)."""

    objective: str
    initial_eval_loss: Optional[float] = None
    wall_seconds: float = 0.0
    """Seconds spent in training steps, over every session of the run."""
    tokens: int = 0
    eval: List[list] = dataclasses.field(default_factory=list)
    """[step, eval loss] per evaluation."""
    eval_clock: List[list] = dataclasses.field(default_factory=list)
    """[step, wall_seconds, layer FLOPs fraction] per evaluation."""
    extra_eval: Dict[str, List[list]] = dataclasses.field(default_factory=dict)
    """--extra-eval NAME -> [step, loss] per evaluation."""
    run_id: Optional[str] = None
    """The run's id (its TensorBoard folder's suffix), kept by every resumed session."""

    def restore(self, state: dict) -> None:
        """Continue the record a checkpoint saved (keys it lacks keep their start values)."""
        for field in dataclasses.fields(self):
            if field.name in state:
                setattr(self, field.name, state[field.name])

    def state(self) -> dict:
        return dataclasses.asdict(self)


class TrainLoop:
    """Steps, evaluations and checkpoints of one session of a run."""

    def __init__(self, plan: RunPlan, setup: TrainSetup, batches, history: History,
                 control: RunControl, extra: Optional[ExtraEvals] = None):
        self.flags, self.setup, self.batches, self.history = plan.flags, setup, batches, history
        self.control, self.extra = control, extra
        self.rank = torch.distributed.get_rank()
        self.saved: Optional[str] = None
        """The tag of the last checkpoint this session wrote."""
        self.tty = sys.stdout.isatty()
        self.log_interval = resolve_log_interval(self.flags.log_interval,
                                                 self.flags.train_steps, self.tty)
        self.session_steps, self.session_seconds = 0, 0.0
        engine = setup.engine
        self.eval_set = to_device(batches.eval_batches(self.flags.eval_sequences,
                                                       engine.train_micro_batch_size_per_gpu()),
                                  engine.device, setup.inputs)

    def evaluate(self, step: int, *, log: bool = False) -> float:
        """The full model's held-out loss at ``step``, recorded and written to TensorBoard
        (``log``: and printed, rank 0)."""
        engine = self.setup.engine
        loss = engine.evaluate(self.eval_set)
        if log and self.rank == 0:
            print(f"megaraptr: step {step}: eval loss {loss:.4f}", flush=True)
        self.history.eval.append([step, loss])
        self.history.eval_clock.append([step, self.history.wall_seconds,
                                        engine.layer_flops_fraction()])
        monitor.write(engine, monitor.eval_events(step, loss))
        if self.extra is not None:
            self.extra.evaluate(engine, step, self.history.extra_eval)
        return loss

    def train(self) -> Optional[str]:
        """Train from the engine's applied step to --exit-at-step or --train-steps; returns why
        the session stopped before that (a signal, the launcher's death), or None."""
        flags = self.flags
        stop_at = flags.exit_at_step or flags.train_steps
        bar = _Bar(total=flags.train_steps, initial=self.setup.engine.applied_steps,
                   disable=self.rank != 0 or not sys.stderr.isatty(),  # a file: plain lines
                   dynamic_ncols=True, desc="train", mininterval=0.5)
        try:  # the bar ends its line however the loop ends (an error's line comes after it)
            while self.setup.engine.applied_steps < stop_at:
                stop = self._step(bar, stop_at)
                if stop:
                    return stop
            return None
        finally:
            bar.close()

    def _step(self, bar, stop_at: int) -> Optional[str]:
        """One step, its log line, evaluation and checkpoint; returns why the run stops after
        it (agreed by every rank through the step's votes), or None."""
        flags, history, batches = self.flags, self.history, self.batches
        step = self.setup.engine.applied_steps + 1
        engine = self.setup.next_engine(lambda: {"train": history.state()})  # pipelines
        # re-partition at planned stage changes: only then is the history copied
        torch.manual_seed(run_seed(flags.seed, step, self.rank))  # dropout: a function of step
        t0 = time.perf_counter()
        result = engine.train_step(to_device(batches.step_batches(step), engine.device,
                                             self.setup.inputs), self.control.votes())
        loss = result.mean_loss  # all ranks' mean, from the step's one all-reduce
        elapsed = time.perf_counter() - t0
        history.wall_seconds += elapsed
        self.session_steps, self.session_seconds = self.session_steps + 1, \
            self.session_seconds + elapsed
        history.tokens += batches.tokens_per_step
        tps = batches.tokens_per_step / elapsed
        lr_scheduler = engine.lr_scheduler
        lr = lr_scheduler.get_last_lr()[0] if lr_scheduler else \
            engine.optimizer.param_groups[0]["lr"]
        monitor.write(engine, monitor.step_events(
            result, loss=loss, lr=lr, tokens_per_sec=tps,
            layer_flops_fraction=engine.layer_flops_fraction()) + self.setup.events(result))
        bar.set_postfix(loss=f"{loss:.3f}", stage=result.stage.name,
                        layers=result.mask.num_active, tok_s=f"{tps:,.0f}", refresh=False)
        bar.update(1 if result.applied else 0)
        done = engine.applied_steps
        if self.log_interval and self.rank == 0 and done % self.log_interval == 0:
            bar.clear()
            print(step_line(done, flags.train_steps, loss=loss, lr=lr,
                            layers=result.mask.num_active, tokens_per_s=tps,
                            seconds_per_step=self.session_seconds / self.session_steps,
                            dropped=result.dropped), flush=True)
        stop = self.control.stop_reason(result.votes) if done < stop_at else None
        if stop and self.rank == 0:
            bar.clear()
            print(f"megaraptr: step {done}: {stop}: "
                  f"{'saving a checkpoint and ' if flags.save else ''}stopping", flush=True)
        self._after_step(done, stop_at, save=bool(stop) or self.control.save_due(result.votes))
        return stop

    def _after_step(self, done: int, stop_at: int, *, save: bool) -> None:
        """Evaluate and save when step ``done`` (applied) asks for it (``save``: the votes do)."""
        flags = self.flags
        if flags.eval_interval and done % flags.eval_interval == 0 and done < flags.train_steps:
            self.evaluate(done, log=True)
        if flags.save and (save or done == stop_at or
                           (flags.save_interval and done % flags.save_interval == 0)):
            self.setup.save(flags.save, f"step{done}", {"train": self.history.state()})
            self.saved = f"step{done}"
            self.control.saved()
