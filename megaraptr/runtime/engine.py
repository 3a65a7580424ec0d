"""RAPTR on top of a DeepSpeed engine: ``megaraptr.initialize`` and one training step.

Usage, in the shape of ``deepspeed.initialize``::

    engine, optimizer, _, lr_scheduler = megaraptr.initialize(
        model=model, model_parameters=param_groups, config="ds_config.json", total_steps=N)
    for step in range(engine.applied_steps + 1, N + 1):
        result = engine.train_step(micro_batches)   # gradient_accumulation_steps batches

``train_step`` picks the step's subnetwork from (seed, applied step), applies it to the
blocks, runs forward/backward on every micro-batch with that one subnetwork, and lets
DeepSpeed step; under ``"skipped_layers": "freeze"`` the optimizer leaves skipped layers alone.
The clock is ``global_steps - skipped_steps``: an fp16 step skipped for overflow does not
advance the schedule, and the next call retries the same step with the same subnetwork.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from megaraptr import methods
from megaraptr.core.block import find_blocks, set_layer_mask
from megaraptr.core.config import RaptrConfig
from megaraptr.core.mask import LayerMask, MaskDigest
from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.core.schedule import Schedule, rewarm_multiplier
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError
from megaraptr.kernels import apply_kernels, fused_optimizer, resolve_kernels
from megaraptr.runtime import compat, consistency, resume_state
from megaraptr.runtime.layer_copy import copy_layers
from megaraptr.runtime.step_result import StepResult, loss_of
from megaraptr.runtime.zero.groups import (FrozenLayers, clear_stale_zero3_grads, has_layer_groups,
                                           layer_param_groups)
from megaraptr.runtime.zero.norm import install_layer_norm
from megaraptr.runtime.zero.prefetch import SubnetworkTrace
from megaraptr.runtime.zero.step import install_frozen_step


class RaptrEngine:
    """A DeepSpeed engine that trains one subnetwork per optimizer step.

    Attributes not defined here (``module``, ``global_steps``, ``monitor``, ...) are the
    DeepSpeed engine's, reachable as ``engine.ds`` too.
    """

    def __init__(self, ds_engine, *, config: RaptrConfig, schedule: Schedule, seed: int,
                 partitions=None):
        self.ds = ds_engine
        self.config = config
        self.schedule = schedule
        self.sampler = SubnetworkSampler(schedule, seed, partitions)
        self.blocks = find_blocks(ds_engine.module, partial=self.is_pipeline)
        self.zero_stage = ds_engine.zero_optimization_stage()
        self.deepspeed_patches = dict(compat.PROCESS_PATCHES)
        """Each DeepSpeed patch megaraptr considered: "active" or "fallback: <reason>" (a
        source differs from DeepSpeed 0.19.8's: DeepSpeed's own path runs); runtime.compat."""
        self.trace = SubnetworkTrace(ds_engine, self.blocks) if self.zero_stage == 3 and \
            compat.guard(self.deepspeed_patches, "zero3_prefetch") else None
        self.private_clear = self.zero_stage == 3 and \
            compat.guard(self.deepspeed_patches, "zero3_stale_grads")
        self.digest = MaskDigest()
        self._applied_mask: Optional[LayerMask] = None
        """The mask on the blocks and the freezer now (None: unknown, apply the next one)."""
        self.active_layer_steps = 0
        """Sum over applied steps of the number of layers that ran."""
        self.freeze_skipped = config.trains_subnetworks and config.skipped_layers == "freeze"
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
                self.fast_step = install_frozen_step(ds_engine.optimizer,
                                                     lambda: self.freezer.frozen,
                                                     self.deepspeed_patches,
                                                     epilogue=self.fast_norm)

    def __getattr__(self, name):
        return getattr(self.__dict__["ds"], name)

    kernels: dict = {"mode": "eager", "requested": "eager", "optimizer": "as configured",
                     "reason": "not installed (pipelines run eager kernels)"}
    """What megaraptr.kernels installed (set by :func:`initialize`)."""

    is_pipeline = False
    """True in :class:`megaraptr.runtime.pipe.engine.RaptrPipelineEngine` (the blocks of one stage)."""
    check_group = property(lambda self: self.ds.data_parallel_group)
    """The ranks that must agree on the subnetwork (pipelines: all of them)."""

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
        if self.trace is not None:
            self.trace.prepare(mask.active)
        return step, stage, mask

    def train_step(self, micro_batches: Sequence[dict]) -> StepResult:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches (dicts of
        model keyword arguments), all on the same subnetwork."""
        expected = self.ds.gradient_accumulation_steps()
        if len(micro_batches) != expected:
            raise ValueError(f"train_step needs {expected} micro-batches (gradient_accumulation_"
                             f"steps), got {len(micro_batches)}")
        step, stage, mask = self.begin_step()
        self.ds.train()
        total = torch.zeros((), device=self.ds.device)
        for i, batch in enumerate(micro_batches):
            loss = loss_of(self.ds(**batch))
            self.ds.backward(loss)
            restore = None
            if i == expected - 1:
                self._before_optimizer_step(mask)
                restore = self._rewarm_lr(step, stage)
            self.ds.step()
            if restore:
                restore()
            total += loss.detach().float()
        return self._result(step, stage, mask, (total, expected))

    def _result(self, step: int, stage: Stage, mask: LayerMask, loss) -> StepResult:
        """Account for step ``step`` once DeepSpeed has run it: the run's digest and layer
        count move only when the optimizer applied it (not on an fp16 overflow)."""
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
        if factor == 1.0:
            return None
        groups = self.ds.optimizer.param_groups
        saved = [(g, g["lr"], g["lr"] * factor) for g in groups]
        for group, _, scaled in saved:
            group["lr"] = scaled

        def undo():
            for group, lr, scaled in saved:
                if group["lr"] == scaled:
                    group["lr"] = lr
        return undo

    def copy_layers(self, copies) -> None:
        """Copy layer ``source`` onto layer ``target`` for each (target, source), in the module
        and in the optimizer's fp32 master weights, on every rank (stacking's growth)."""
        copy_layers(self.ds, self.blocks, copies)

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

    @torch.no_grad()
    def evaluate(self, batches: Sequence[dict]) -> float:
        """Mean loss of the full model over ``batches`` on all ranks, weighted by the number
        of predicted tokens (labels other than -100)."""
        from deepspeed import comm as dist

        was_training = self.ds.module.training
        eval_mask = self.schedule.policy.eval_mask(self.sampler, self.applied_steps)
        if eval_mask is not None:  # stacking: the model that exists now
            set_layer_mask(self.blocks, eval_mask)
            self._applied_mask = None  # the next step applies its own again
        self.ds.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.ds.device)
        for batch in batches:
            count = (batch["labels"] != -100).sum()
            sums[0] += loss_of(self.ds(**batch)).double() * count
            sums[1] += count
        dist.all_reduce(sums, group=self.ds.data_parallel_group)
        self.ds.train(was_training)
        return float(sums[0] / sums[1])

    def save_checkpoint(self, save_dir: str, tag: Optional[str] = None,
                        client_state: Optional[dict] = None, **kwargs) -> bool:
        """DeepSpeed's checkpoint with megaraptr's state under ``client_state["raptr"]``."""
        state = dict(client_state or {}, raptr=resume_state.raptr_state(self))
        return self.ds.save_checkpoint(save_dir, tag=tag, client_state=state, **kwargs)

    def load_checkpoint(self, load_dir: str, tag: Optional[str] = None, *,
                        override_schedule: bool = False, **kwargs):
        """Load a checkpoint and megaraptr's state; refuse a different schedule unless
        ``override_schedule``. Returns (path, client_state) like DeepSpeed."""
        path, client_state = self.ds.load_checkpoint(load_dir, tag=tag, **kwargs)
        resume_state.restore_raptr_state(self, path, client_state, override_schedule)
        return path, client_state


def initialize(args=None, model=None, optimizer=None, model_parameters=None,
               training_data=None, lr_scheduler=None, config=None, *, total_steps: int,
               seed: Optional[int] = None, partitions=None, **ds_kwargs):
    """``deepspeed.initialize`` with RAPTR: returns (engine, optimizer, dataloader, scheduler).

    Args:
        config: the DeepSpeed config (dict or JSON path), with an optional "raptr" block;
            ``args.deepspeed_config`` is used when None.
        total_steps: the run's total optimizer steps N (the schedule spans 1..N).
        seed: sampler seed when the raptr block gives none (default 0).
        optimizer: None (the ds_config "optimizer" block), a callable taking parameter groups,
            or a torch optimizer built from :func:`megaraptr.layer_param_groups`.
        partitions: "balanced" sampling's layer partition per schedule stage (default: one
            part; a pipeline run's plan reproduces its subnetworks without a pipeline).
        Other arguments go to ``deepspeed.initialize`` unchanged.

    Raises:
        ConfigError: a bad raptr block or schedule, before DeepSpeed builds anything.
    """
    import deepspeed

    if config is None and args is not None:
        config = getattr(args, "deepspeed_config", None)
    if config is None:
        raise ConfigError("config", "a DeepSpeed config (dict or JSON path) is required")
    raptr_config, ds_config = methods.split_ds_config(config)
    ds_config = unsynchronised_throughput_timer(ds_config)
    blocks = find_blocks(model)
    schedule = methods.build_schedule(raptr_config, num_layers=len(blocks), total_steps=total_steps)
    kernels, ds_config, optimizer = _install_kernels(raptr_config.kernels, model, blocks,
                                                     ds_config, optimizer)
    if isinstance(optimizer, torch.optim.Optimizer):
        if raptr_config.trains_subnetworks and raptr_config.skipped_layers == "freeze" and \
                not has_layer_groups(optimizer):
            raise ConfigError("raptr.skipped_layers", '"freeze" needs an optimizer built from '
                              "megaraptr.layer_param_groups(model, ...) or none at all")
        groups = model_parameters
    else:
        groups = layer_param_groups(model, blocks, model_parameters)
    if args is not None and getattr(args, "deepspeed_config", None) is not None:
        args.deepspeed_config = None  # the dict below is the config; DeepSpeed refuses both
    ds_engine, ds_optimizer, dataloader, scheduler = deepspeed.initialize(
        args=args, model=model, optimizer=optimizer, model_parameters=groups,
        training_data=training_data, lr_scheduler=lr_scheduler, config=ds_config, **ds_kwargs)
    sampler_seed = raptr_config.seed if raptr_config.seed is not None else (seed or 0)
    engine = RaptrEngine(ds_engine, config=raptr_config, schedule=schedule, seed=sampler_seed,
                         partitions=partitions)
    engine.kernels = kernels
    return engine, ds_optimizer, dataloader, scheduler


def unsynchronised_throughput_timer(ds_config: dict) -> dict:
    """DeepSpeed's throughput timer synchronizes the device twice per step by default (when
    forward starts and when step ends: two stalls of the GPU queue per step, whatever the
    model). Unless the config has a "timers" block, megaraptr keeps the timer with
    ``"synchronized": false``: its samples/s over ``steps_per_print`` steps are the same once
    the queue is full, and the host runs ahead of the device as it would without the timer."""
    if "timers" in ds_config:
        return ds_config
    return dict(ds_config, timers={"throughput": {"enabled": True, "synchronized": False}})


def _install_kernels(mode: str, model, blocks, ds_config: dict, optimizer):
    """Resolve the "kernels" setting for this device and ZeRO stage and install it on the
    model and the optimizer; returns (report, ds_config, optimizer) (megaraptr.kernels)."""
    from deepspeed.accelerator import get_accelerator


    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    plan = resolve_kernels(mode, device=get_accelerator().device_name(), zero_stage=stage)
    installed = apply_kernels(model, blocks, plan)
    ds_config, optimizer, choice = fused_optimizer(ds_config, plan, optimizer)
    return dict(plan.to_dict(), optimizer=choice, **installed), ds_config, optimizer
