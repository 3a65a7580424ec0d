"""RAPTR under DeepSpeed pipeline parallelism: the module, its partition, and the cost profile.

DeepSpeed's ``PipelineModule`` partitions its layer specs once, at construction, by a named
method. :class:`RaptrPipelineModule` takes the partition as data instead: a partition of the
transformer layers (``megaraptr.balance.Partition``: ``b_0 = 0 < ... < b_S = L``), mapped to
spec boundaries so that the embeddings sit on the first stage and the head on the last
(:func:`megaraptr.models.pipe.spec_bounds`). A different partition is a different module:
:mod:`megaraptr.runtime.pipe.repartition` moves a run from one to the other through a checkpoint.

Every stage holds some of the reference blocks, each with its global layer id, and applies its
entries of the one full-model mask that every rank computes from (seed, step): the engine
(:mod:`megaraptr.runtime.engine`) is the same as for ZeRO; only the call that runs the step differs
(``train_batch`` instead of forward/backward/step). Pipelines allow ZeRO stage 0 or 1.

The costs the partitions are planned from come from the config or from the short profile in
:mod:`megaraptr.planning.profiling`.

3D: with ``"tensor_parallel": {"autotp_size": T}`` the module is built on DeepSpeed's
``PipeModelDataParallelTopology`` (P stages x D replicas x T shards, tensor parallelism
innermost) and each stage's blocks are split over their tensor-parallel group
(:mod:`megaraptr.runtime.tp`), whose ranks are the grid's ``"model"`` axis. Every tensor-parallel
rank sends and receives the whole activation (DeepSpeed's ``pipe_partitioned`` and
``grad_partitioned`` are off).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from megaraptr import methods
from megaraptr.core.block import check_block_contract, find_blocks
from megaraptr.core.config import PipelineSpec
from megaraptr.core.partition import Partition
from megaraptr.errors import ConfigError, EngineUsageError
from megaraptr.methods import build_schedule, split_ds_config
from megaraptr.models import optimizer_groups as default_groups
from megaraptr.models.pipe import copy_reference_weights, layer_specs, loss_fn, spec_bounds
from megaraptr.planning.balance import Costs, imbalance, plan_partitions
from megaraptr.runtime import compat
from megaraptr.runtime.divergence import reduce_step
from megaraptr.runtime.engine import RaptrEngine, StepResult
from megaraptr.runtime.initialize import unsynchronised_throughput_timer
from megaraptr.runtime.pipe.norm import install_pipeline_norm
from megaraptr.runtime.tp import (ParallelGroups, apply_tensor_parallel, check_grid,
                                  pipeline_ds_config, pipeline_groups, pipeline_topology)
from megaraptr.runtime.zero.groups import layer_param_groups


def _pipeline_module_class():
    from deepspeed.pipe import PipelineModule

    class RaptrPipelineModule(PipelineModule):
        """A ``PipelineModule`` whose partition is given (``spec_parts``), not computed."""

        def __init__(self, layers, *, spec_parts: Sequence[int], layer_parts: Partition,
                     **kwargs):
            self.raptr_spec_parts = list(spec_parts)
            self.raptr_layer_parts = tuple(layer_parts)
            super().__init__(layers=layers, partition_method="uniform", **kwargs)

        def _partition_layers(self, method="uniform"):
            stage_id = self._topo.get_coord(self.global_rank).pipe
            if len(self.raptr_spec_parts) != self.num_stages + 1:
                raise ValueError(f"partition {self.raptr_layer_parts} has "
                                 f"{len(self.raptr_spec_parts) - 1} parts for "
                                 f"{self.num_stages} pipeline stages")
            self.parts = list(self.raptr_spec_parts)
            self._set_bounds(start=self.parts[stage_id], stop=self.parts[stage_id + 1])

    return RaptrPipelineModule


def check_pipeline(num_stages: int, num_layers: int, ds_config: dict,
                   raptr_config=None) -> None:
    """One-line errors for what a pipeline run cannot do, before anything is built."""
    if raptr_config is not None and raptr_config.enabled and \
            not methods.get(raptr_config.method).supports_pipeline:
        allowed = ", ".join(m.name for m in methods.METHODS.values() if m.supports_pipeline)
        raise ConfigError("raptr.method", f'"{raptr_config.method}" is not supported with '
                          f"--pipeline-stages; allowed: {allowed}")
    if ds_config.get("fp16", {}).get("enabled"):
        raise ConfigError("fp16.enabled", "fp16 with --pipeline-stages is not supported; "
                          "allowed: bf16 or fp32")
    if raptr_config is not None and raptr_config.on_nonfinite == "skip_step":
        raise ConfigError("raptr.on_nonfinite", '"skip_step" is not supported with '
                          '--pipeline-stages (the loss is known only after the update); '
                          'allowed: "stop"')
    if num_stages < 1:
        raise ConfigError("--pipeline-stages", f"{num_stages}; allowed: 1 or more")
    if num_stages > num_layers:
        raise ConfigError("--pipeline-stages", f"{num_stages} stages for {num_layers} layers; "
                          "allowed: at most one stage per layer")
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1):
        raise ConfigError("zero_optimization.stage", f"{stage} with --pipeline-stages; "
                          "allowed: 0 or 1 (DeepSpeed pipelines support no ZeRO-2/3)")


def build_module(name: str, cfg, *, num_stages: int, layer_parts: Partition,
                 reference: Optional[torch.nn.Module] = None, topology=None):
    """The pipeline module of reference model ``name`` under ``layer_parts``; with
    ``reference``, this stage's specs get that model's weights.

    Raises:
        DeepSpeedCompatError: the installed DeepSpeed's ``PipelineModule`` differs from the
            one the partition override was written for (no fallback places the partition).
    """
    compat.require(None, "pipe_partition")
    cls = _pipeline_module_class()
    kwargs = dict(topology=topology) if topology is not None else dict(num_stages=num_stages)
    module = cls(layer_specs(name, cfg), spec_parts=spec_bounds(layer_parts, cfg.num_layers),
                 layer_parts=layer_parts, loss_fn=loss_fn(name), **kwargs)
    module.raptr_model = name
    module.raptr_num_layers = cfg.num_layers
    if reference is not None:
        copy_reference_weights(module, reference)
    return module


class RaptrPipelineEngine(RaptrEngine):
    """:class:`megaraptr.runtime.engine.RaptrEngine` over DeepSpeed's ``PipelineEngine``: one
    ``train_batch`` per optimizer step, on the subnetwork every rank derives from the step.

    Attributes:
        partitions: the planned layer partition of each schedule stage.
        costs: the cost model the plan came from (saved with checkpoints: a resumed run plans
            the same partitions).
    """

    is_pipeline = True
    check_group = None  # every rank of every pipeline stage computes the same mask

    def __init__(self, ds_engine, *, config, schedule, seed, partitions, costs: Costs,
                 tensor_parallel=None):
        super().__init__(ds_engine, config=config, schedule=schedule, seed=seed,
                         partitions=partitions, tensor_parallel=tensor_parallel)
        self.partitions = tuple(tuple(p) for p in partitions)
        self.costs = costs
        self.layer_parts = tuple(ds_engine.module.raptr_layer_parts)
        compat.require(self.deepspeed_patches, "pipe_partition")  # build_module checked it
        # checkpoints and re-partitioning read ZeRO-1's or the bf16 optimizer's flat partitions
        if ds_engine.zero_optimization() or ds_engine.bfloat16_enabled():
            compat.require(self.deepspeed_patches, "pipe_optim_state")
        install_pipeline_norm(ds_engine, self.deepspeed_patches)

    @property
    def num_stages(self) -> int:
        return self.ds.num_stages

    def planned_partition(self, step: Optional[int] = None) -> Partition:
        """The partition the plan gives applied step ``step`` (default: the next one)."""
        step = self.applied_steps + 1 if step is None else step
        return self.partitions[self.schedule.stage_at(min(step, self.schedule.total_steps)).index]

    def needs_repartition(self) -> Optional[Partition]:
        """The next step's planned partition when it differs from this module's, else None."""
        planned = self.planned_partition()
        return None if planned == self.layer_parts else planned

    def imbalance(self) -> float:
        """Busiest pipeline stage's predicted time / mean, for the next step's stage."""
        stage = self.schedule.stage_at(min(self.applied_steps + 1, self.schedule.total_steps))
        return imbalance(self.costs, self.layer_parts, stage)

    def train_batch(self, data_iter, votes=()) -> StepResult:
        """One optimizer step: ``gradient_accumulation_steps`` micro-batches from
        ``data_iter`` ((inputs, labels) pairs) through the 1F1B pipeline schedule; then the
        step's one all-reduce (``votes``: as for :meth:`RaptrEngine.train_step`)."""
        step, stage, mask = self.begin_step()
        restore = self._rewarm_lr(step, stage)
        skipped_before = self.ds.skipped_steps
        loss = float(self.ds.train_batch(data_iter=data_iter))  # the same on every stage
        if restore:
            restore()
        return self._finish(step, stage, mask, loss, reduce_step(loss, votes, self.ds.device),
                            skipped_before)

    def __call__(self, *args, **kwargs):
        """Refused: a pipeline runs a batch on all its stages at once (DeepSpeed's own
        ``PipelineEngine.forward`` refuses too); :meth:`evaluate` is the full model's loss."""
        raise EngineUsageError("RaptrPipelineEngine(**batch): a pipeline runs a batch on all "
                               "its stages together; engine.evaluate(batches) evaluates the "
                               "full model, engine.train_step(micro_batches) trains")

    @property
    def mlm(self) -> bool:
        return self.ds.module.raptr_model == "bert"

    def train_step(self, micro_batches, votes=()):
        """``train_batch`` over a list of micro-batch dicts (the ZeRO path's interface)."""
        return self.train_batch(iter([pipe_pair(b, self.mlm) for b in micro_batches]), votes)

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Mean loss of the full model over ``batches`` (micro-batches of the eval set), the
        same on every rank. Full micro-batches weigh equally (GPT: equal token counts); a
        last, shorter one (a held-out set that is not a whole number of micro-batches) is
        padded with ignored rows, since every micro-batch crossing the pipeline has one shape,
        and weighs by its real rows."""
        was_training = self.ds.module.training
        micro, size = self.ds.train_micro_batch_size_per_gpu(), self.ds.micro_batches
        full = [b for b in batches if len(b["labels"]) == micro]
        short = [b for b in batches if len(b["labels"]) != micro]
        total, weight = 0.0, 0.0
        for start in range(0, len(full), size):
            chunk = [pipe_pair(b, self.mlm) for b in full[start:start + size]]
            total += float(self.ds.eval_batch(iter(chunk), num_micro_batches=len(chunk))) * \
                len(chunk)
            weight += len(chunk)
        for batch in short:  # each alone: eval_batch weighs the micro-batches of a call equally
            pair = pipe_pair(pad_rows(batch, micro), self.mlm)
            total += float(self.ds.eval_batch(iter([pair]), num_micro_batches=1)) * \
                len(batch["labels"]) / micro
            weight += len(batch["labels"]) / micro
        self.ds.train(was_training)
        return total / max(weight, 1e-12)


def pad_rows(batch: dict, rows: int) -> dict:
    """``batch`` with ``rows`` rows: copies of its first row, every label ignored (-100)."""
    extra = rows - len(batch["labels"])
    ids = torch.cat([batch["input_ids"], batch["input_ids"][:1].expand(extra, -1)])
    labels = torch.cat([batch["labels"], torch.full_like(batch["labels"][:1], -100)
                        .expand(extra, -1)])
    return {"input_ids": ids, "labels": labels}


def pipe_pair(batch: dict, mlm: bool):
    """A micro-batch dict as the (inputs, labels) pair DeepSpeed's pipeline reads; BERT's
    labels also travel with the activations (the head runs on masked positions only)."""
    if mlm:
        return (batch["input_ids"], batch["labels"]), batch["labels"]
    return batch["input_ids"], batch["labels"]


def plan(raptr_config, schedule, costs: Costs, num_stages: int):
    """The partition of each schedule stage (re-partitioning per the config's pipeline block)."""

    spec = raptr_config.pipeline or PipelineSpec()
    return plan_partitions(schedule, costs, num_stages, repartition=spec.repartition,
                           min_gain=spec.repartition_min_gain)


def initialize(name: str, cfg, *, config, num_stages: int, total_steps: int, seed: int,
               costs: Costs, reference: Optional[torch.nn.Module] = None,
               layer_parts: Optional[Partition] = None, first_step: int = 1, partitions=None,
               optimizer_groups=None, groups: Optional[ParallelGroups] = None
               ) -> RaptrPipelineEngine:
    """``megaraptr.initialize`` for a pipeline of reference model ``name``.

    Args:
        config: the DeepSpeed config (dict or path) with its "raptr" block; ZeRO 0 or 1.
        costs: the cost model the partitions are planned from (given in the config's
            "pipeline" block, or :func:`measure_costs`; a resumed run's from its checkpoint).
        reference: a reference model whose weights this stage's layers start from.
        layer_parts: build under this partition instead of the plan's for ``first_step``.
        first_step: the applied step the engine trains next (a resumed run: saved step + 1).
        partitions: the plan, when already made (``plan(...)``).
        optimizer_groups: ``fn(module) -> parameter groups`` (default: decay / no decay).
        groups: the run's :func:`megaraptr.runtime.tp.pipeline_groups` (made here when the
            config asks for tensor parallelism and none are given).
    """
    import deepspeed

    raptr_config, ds_config = split_ds_config(config)
    ds_config = unsynchronised_throughput_timer(ds_config)
    check_pipeline(num_stages, cfg.num_layers, ds_config, raptr_config)
    if groups is None:  # and None again without tensor parallelism
        groups = pipeline_groups(ds_config, num_stages)
    schedule = build_schedule(raptr_config, num_layers=cfg.num_layers, total_steps=total_steps)
    partitions = partitions or plan(raptr_config, schedule, costs, num_stages)
    step = min(max(first_step, 1), schedule.total_steps)
    parts = tuple(layer_parts or partitions[schedule.stage_at(step).index])
    module = build_module(name, cfg, num_stages=num_stages, layer_parts=parts,
                          reference=reference, topology=pipeline_topology(groups, num_stages))
    blocks = find_blocks(module, partial=True)
    check_block_contract(blocks)
    if groups is not None:  # this stage's blocks, split over the grid's "model" axis
        apply_tensor_parallel(module, rank=groups.tensor_index, size=groups.tensor_size,
                              group=groups.tensor_group, blocks=blocks)
    params = layer_param_groups(module, blocks, (optimizer_groups or default_groups)(module))
    ds_engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=params,
                                              config=pipeline_ds_config(ds_config, groups))
    check_grid(ds_engine, groups)
    return RaptrPipelineEngine(ds_engine, config=raptr_config, schedule=schedule,
                               seed=raptr_config.sampler_seed(seed), partitions=partitions,
                               costs=costs, tensor_parallel=groups)
