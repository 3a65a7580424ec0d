"""RAPTR on top of a DeepSpeed engine: one training step on the step's subnetwork.

Usage (``megaraptr.initialize``, :mod:`megaraptr.runtime.initialize`, builds the engine in the
shape of ``deepspeed.initialize``)::

    engine, optimizer, _, lr_scheduler = megaraptr.initialize(
        model=model, model_parameters=param_groups, config="ds_config.json", total_steps=N)
    for step in range(engine.applied_steps + 1, N + 1):
        result = engine.train_step(micro_batches)   # gradient_accumulation_steps batches

``train_step`` picks the step's subnetwork from (seed, applied step), applies it to the
blocks, runs forward/backward on every micro-batch with that one subnetwork, and lets
DeepSpeed step; under ``"skipped_layers": "freeze"`` the optimizer leaves skipped layers alone.
The clock is ``global_steps - skipped_steps``: an fp16 step skipped for overflow does not
advance the schedule, and the next call retries the same step with the same subnetwork. Each
step ends in one all-reduce over all ranks (:func:`megaraptr.runtime.divergence.reduce_step`:
the mean loss, the caller's ``votes``) from which the divergence guard (``raptr.on_nonfinite``)
stops the run or drops the step's update, the same way on every rank.
"""
from __future__ import annotations

import contextlib
from types import MappingProxyType
from typing import Optional, Sequence

import torch

from megaraptr import methods
from megaraptr.core.block import find_blocks, set_layer_mask
from megaraptr.core.config import RaptrConfig, StackingSpec
from megaraptr.core.mask import LayerMask, MaskDigest
from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.core.schedule import Schedule, rewarm_multiplier
from megaraptr.core.stage import Stage
from megaraptr.runtime import checkpoints, compat, consistency, surface, tp
from megaraptr.runtime.checkpoints import engine_io
from megaraptr.runtime.divergence import DivergenceGuard, StepReduction, reduce_step
from megaraptr.runtime.layer_copy import grow
from megaraptr.runtime.lr_scale import scale_lr_once
from megaraptr.runtime.skip_probe import SkipProbe
from megaraptr.runtime.step_result import StepResult, loss_of
from megaraptr.runtime.zero.groups import FrozenLayers, clear_stale_zero3_grads, has_layer_groups
from megaraptr.runtime.zero.norm import install_layer_norm
from megaraptr.runtime.zero.prefetch import SubnetworkTrace
from megaraptr.runtime.zero.step import install_frozen_step

NOT_INSTALLED = MappingProxyType({"mode": "eager", "requested": "eager",
                                  "optimizer": "as configured",
                                  "reason": "not installed (pipelines run eager kernels)"})
"""The kernels report of an engine no kernels were installed on (copied per engine)."""


class RaptrEngine:
    """A DeepSpeed engine that trains one subnetwork per optimizer step.

    Its surface: ``train_step`` trains, ``evaluate`` and ``engine(**batch)`` evaluate the full
    model, ``save_checkpoint``/``load_checkpoint`` carry megaraptr's state. Of the DeepSpeed
    engine (``engine.ds``), only the harmless attributes in
    :data:`megaraptr.runtime.surface.FORWARDED` are readable here (``module``,
    ``global_steps``, ``monitor``, ``optimizer``, ``lr_scheduler``, ``device``, the batch
    sizes, ...); ``step``, ``backward``, ``forward`` and ``train_batch`` would bypass the
    step's subnetwork and raise :class:`megaraptr.errors.EngineUsageError` naming
    ``train_step``; anything else is ``engine.ds``'s to reach deliberately.

    Attributes:
        kernels: what :mod:`megaraptr.kernels` installed (set by :func:`megaraptr.initialize`; a
            pipeline engine runs eager kernels).
    """

    def __init__(self, ds_engine, *, config: RaptrConfig, schedule: Schedule, seed: int,
                 partitions=None, kernels: Optional[dict] = None, tensor_parallel=None):
        self.ds = ds_engine
        self.kernels = dict(kernels or NOT_INSTALLED)  # per engine, never shared
        self.config = config
        self.schedule = schedule
        self.sampler = SubnetworkSampler(schedule, seed, partitions)
        self.blocks = find_blocks(ds_engine.module, partial=self.is_pipeline)
        self.zero_stage = ds_engine.zero_optimization_stage()
        self.deepspeed_patches = dict(compat.PROCESS_PATCHES)
        """Each DeepSpeed patch megaraptr considered: "active" or "fallback: <reason>" (a
        source differs from DeepSpeed 0.19.8's: DeepSpeed's own path runs); runtime.compat."""
        self.tp = tp.attach(tensor_parallel, self.deepspeed_patches)  # ParallelGroups or None
        self.checkpoint_io = engine_io.install(ds_engine, self.deepspeed_patches)
        """DeepSpeed's checkpoint reads go through the safe loader; writes of a save are
        recorded here (:mod:`megaraptr.runtime.checkpoints`)."""
        self.trace = SubnetworkTrace(ds_engine, self.blocks) if self.zero_stage == 3 and \
            compat.guard(self.deepspeed_patches, "zero3_prefetch") else None
        self.private_clear = self.zero_stage == 3 and \
            compat.guard(self.deepspeed_patches, "zero3_stale_grads")
        self.digest = MaskDigest()
        self.skip_probe = SkipProbe(self.blocks, ds_engine.device)
        self._applied_mask: Optional[LayerMask] = None
        """The mask on the blocks and the freezer now (None: unknown, apply the next one)."""
        self.active_layer_steps = 0
        """Sum over applied steps of the number of layers that ran."""
        self.freeze_skipped = config.trains_subnetworks and config.skipped_layers == "freeze"
        self.guard = DivergenceGuard(config, fp16=ds_engine.fp16_enabled())
        """What a diverged step does (``raptr.on_nonfinite``); saved in checkpoints."""
        if config.trains_subnetworks:
            methods.get(config.method).check_engine(
                fp16=ds_engine.fp16_enabled(), zero_stage=ds_engine.zero_optimization_stage())
        self.first_staged = 1 if schedule.stages[0].warmup else 0
        """Index of the first stage the LR re-warmup skips (after a full-model warmup: 1)."""
        self.freezer = None
        self.fast_norm = self.fast_step = False
        if has_layer_groups(ds_engine.basic_optimizer):
            self.freezer = FrozenLayers(ds_engine.basic_optimizer, ds_engine.optimizer,
                                        self.deepspeed_patches)
        if self.freezer is not None and not self.is_pipeline:  # pipelines: DeepSpeed's own
            self.fast_norm = install_layer_norm(ds_engine.optimizer, lambda: self.freezer.frozen,
                                                self.deepspeed_patches)
            if self.freeze_skipped:  # with megaraptr's norm nothing reads a frozen gradient
                managed = ds_engine.managed_gradient_accumulation()
                self.fast_step = install_frozen_step(ds_engine.optimizer,
                                                     lambda: self.freezer.frozen,
                                                     self.deepspeed_patches,
                                                     epilogue=self.fast_norm, managed=managed)
        if self.guard.decides_before_update:  # after the freezer: it wraps the same step
            compat.require(self.deepspeed_patches, "nonfinite_skip_step")
            self.guard.install(ds_engine.basic_optimizer or ds_engine.optimizer)

    def __getattr__(self, name):  # only names not found on the engine itself get here
        return surface.forwarded(self.__dict__.get("ds"), type(self).__name__, name)

    is_pipeline = False
    """True in :class:`megaraptr.runtime.pipe.engine.RaptrPipelineEngine` (the blocks of one stage)."""
    check_group = property(lambda self: self.ds.data_parallel_group if self.tp is None else None)
    """The ranks that must agree on the subnetwork (under TP and in pipelines: every rank)."""

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def applied_steps(self) -> int:
        """Optimizer steps applied so far (the schedule's clock)."""
        return self.ds.global_steps - self.ds.skipped_steps

    @property
    def data_parallel_rank(self) -> int:
        from deepspeed import comm as dist

        return dist.get_rank(group=self.ds.data_parallel_group)

    @property
    def data_parallel_size(self) -> int:
        return self.ds.dp_world_size

    def mean_over_ranks(self, value: float) -> float:
        """The mean of a per-rank number over the data-parallel ranks (one all-reduce)."""
        from deepspeed import comm as dist

        total = torch.tensor([value], dtype=torch.float64, device=self.ds.device)
        dist.all_reduce(total, group=self.ds.data_parallel_group)
        return float(total) / self.data_parallel_size

    def layer_flops_fraction(self) -> float:
        """Layer FLOPs spent so far relative to full-model training of as many steps."""
        steps = self.applied_steps
        if steps == 0:
            return 1.0
        return self.active_layer_steps / (steps * self.schedule.num_layers)

    def begin_step(self) -> tuple[int, Stage, LayerMask]:
        """Choose and apply the next step's subnetwork (checking ranks when due)."""
        step = self.applied_steps + 1
        stage = self.schedule.stage_at(step)
        mask = self.sampler.mask(step)
        if consistency.due(step, self.config.consistency_check_interval):
            consistency.check_same_subnetwork(
                seed=self.seed, fingerprint=self.schedule.fingerprint(), step=step, mask=mask,
                device=self.ds.device, group=self.check_group)
        if step == stage.first_step:  # what the method does at a stage start (stacking grows)
            copies = self.schedule.policy.stage_start_copies(self.schedule, stage)
            if copies:
                self.copy_layers(copies)
        if mask is not self._applied_mask:  # O(1) while the mask stays (the full model's)
            set_layer_mask(self.blocks, mask)
            if self.freeze_skipped:
                self.freezer.set_frozen(mask.skipped_ids)
            self._applied_mask = mask
        self.skip_probe.arm(mask)  # the first step that skips layers only
        if self.trace is not None:
            self.trace.prepare(mask.active)
        return step, stage, mask

    def train_step(self, micro_batches: Sequence[dict],
                   votes: Sequence[float] = ()) -> StepResult:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches (dicts of
        model keyword arguments), all on the same subnetwork.

        Args:
            votes: numbers to sum over all ranks in the step's one all-reduce (e.g. 1.0 where
                a signal arrived); the sums come back in ``StepResult.votes``.

        Raises:
            DivergenceError: the step diverged and ``raptr.on_nonfinite`` says stop.
        """
        expected = self.ds.gradient_accumulation_steps()
        if len(micro_batches) != expected:
            raise ValueError(f"train_step needs {expected} micro-batches (gradient_accumulation_"
                             f"steps), got {len(micro_batches)}")
        step, stage, mask = self.begin_step()
        self.ds.train()
        skipped_before = self.ds.skipped_steps
        total = torch.zeros((), device=self.ds.device)
        reduced = None
        for i, batch in enumerate(micro_batches):
            loss = loss_of(self.ds(**batch))
            self.ds.backward(loss)
            total += loss.detach().float()
            restore = None
            if i == expected - 1:
                self._before_optimizer_step(mask)
                if self.guard.decides_before_update:  # every rank knows the loss first
                    reduced = reduce_step(total / expected, votes, self.ds.device)
                    self.guard.before_update(reduced)
                restore = self._rewarm_lr(step, stage)
            self.ds.step()
            if restore:
                restore()
        reduced = reduced or reduce_step(total / expected, votes, self.ds.device)
        return self._finish(step, stage, mask, reduced.local_loss, reduced, skipped_before)

    def _finish(self, step: int, stage: Stage, mask: LayerMask, loss: float,
                reduced: StepReduction, skipped_before: int) -> StepResult:
        """Judge step ``step`` (raptr.on_nonfinite: may raise) once DeepSpeed has run it, then
        account for it (:meth:`_result`)."""
        dropped = self.guard.judge(step, reduced, self.ds, skipped_before)
        result = self._result(step, stage, mask, loss)
        result.mean_loss, result.votes, result.dropped = reduced.mean_loss, reduced.votes, dropped
        return result

    def _result(self, step: int, stage: Stage, mask: LayerMask, loss: float) -> StepResult:
        """Account for step ``step`` once DeepSpeed has run it: the run's digest and layer
        count move only when the optimizer applied it (not on an fp16 overflow)."""
        self.skip_probe.verify(step)
        applied = self.applied_steps == step
        if applied:
            self.digest.update(step, mask)
            self.active_layer_steps += mask.num_active
        return StepResult(step, stage, mask, loss, applied, self.schedule.keep_prob_at(step))

    def _rewarm_lr(self, step: int, stage: Stage):
        """Scale this step's LR by the stage re-warmup factor; returns an undo for the case
        no LR scheduler overwrites it after the step."""
        factor = rewarm_multiplier(step, stage.first_step, stage.index,
                                   self.config.stage_lr_rewarm_steps, self.first_staged)
        return scale_lr_once(self.ds.optimizer, factor)

    def copy_layers(self, copies) -> None:
        """Copy layer ``source`` onto layer ``target`` for each (target, source), in the module
        and in the optimizer's fp32 master weights, on every rank (stacking's growth); the
        optimizer state follows ``"stacking": {"optimizer_state"}``."""
        grow(self.ds, self.blocks, copies, (self.config.stacking or StackingSpec()).optimizer_state,
             self.freezer, self.deepspeed_patches)

    def _before_optimizer_step(self, mask: LayerMask) -> None:
        """Gradients are reduced; the optimizer has not run: mend what ZeRO-3 left stale.

        Under freeze with megaraptr's norm, nothing reads a skipped layer's gradient buffer
        (neither the norm nor the optimizer), so the stale values can stay: the layer's next
        active step overwrites them."""
        if self.zero_stage != 3 or not mask.skipped_ids:
            return
        if not (self.freeze_skipped and self.fast_norm):
            params = [p for i in mask.skipped_ids for p in self.blocks[i].parameters()]
            clear_stale_zero3_grads(self.ds.optimizer, params, private=self.private_clear)

    @contextlib.contextmanager
    def _full_model(self):
        """Eval mode (every block runs, unscaled) for the body, then the previous mode."""
        was_training = self.ds.module.training
        eval_mask = self.schedule.policy.eval_mask(self.sampler, self.applied_steps)
        if eval_mask is not None:  # stacking: the model that exists now
            set_layer_mask(self.blocks, eval_mask)
            self._applied_mask = None  # the next step applies its own again
        self.ds.eval()
        try:
            yield
        finally:
            self.ds.train(was_training)

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        """The full model's output on one batch (``engine(**batch)``), with eval semantics.

        Every block runs, unscaled, without dropout (under stacking: the blocks that exist
        now), whatever the engine's mode: in train mode the module is switched to eval for
        this call and back afterwards, so the call never runs a training subnetwork. No
        gradients are recorded (a backward through it would bypass ``train_step``). Every
        data-parallel rank must call it together under ZeRO-3, as for any forward there.
        """
        with self._full_model():
            return self.ds(*args, **kwargs)

    @torch.no_grad()
    def evaluate(self, batches: Sequence[dict]) -> float:
        """Mean loss of the full model over ``batches`` on all ranks, weighted by the number
        of predicted tokens (labels other than -100)."""
        from deepspeed import comm as dist

        sums = torch.zeros(2, dtype=torch.float64, device=self.ds.device)
        with self._full_model():
            for batch in batches:
                count = (batch["labels"] != -100).sum()
                sums[0] += loss_of(self.ds(**batch)).double() * count
                sums[1] += count
        dist.all_reduce(sums, group=self.ds.data_parallel_group)
        return float(sums[0] / sums[1])

    def save_checkpoint(self, save_dir: str, tag: Optional[str] = None,
                        client_state: Optional[dict] = None, **kwargs) -> str:
        """A complete checkpoint with megaraptr's state under ``client_state["raptr"]`` and
        ``latest`` moved to it, or nothing (:func:`megaraptr.runtime.checkpoints.save`: ``keep``,
        ``run``; non-finite weights raise DivergenceError); returns its folder."""
        return checkpoints.save(self, save_dir, tag, client_state, **kwargs)

    def load_checkpoint(self, load_dir: str, tag: Optional[str] = None, *,
                        override_schedule: bool = False, verify: bool = True, **kwargs):
        """Load a checkpoint and megaraptr's state (:func:`megaraptr.runtime.checkpoints.
        load_engine`: ``tag``, or ``latest`` verified on all ranks with fallback to the newest
        complete one; a different schedule refused unless ``override_schedule``). Returns
        (path, client_state) like DeepSpeed."""
        return checkpoints.load_engine(self, load_dir, tag, override_schedule=override_schedule,
                                       verify=verify, **kwargs)
