"""What ``megaraptr.tools.train --pipeline-stages N`` adds to the training loop.

:class:`PipelineRun` builds the run's pipeline engine and keeps the few things that differ
from the ZeRO path, so that :mod:`megaraptr.tools.train` reads the same for both:

- the initial weights are those of the reference model the non-pipeline run would build
  (same seed), copied into the layers each stage holds: a pipeline run and a plain run of
  the same config start from the same model;
- the cost model comes from the config's ``"pipeline": {"costs"}``, else from the checkpoint
  being resumed, else from a short profile (:func:`megaraptr.planning.profiling.measure_costs`), and
  the partition of each schedule stage is planned from it (:func:`megaraptr.balance.
  plan_partitions`); under tensor parallelism the profiled layer is the tensor-parallel one
  (its shard of the work and its all-reduces), run on every rank of its group together;
- before every step, :meth:`next_engine` re-partitions when the plan says so (through a
  checkpoint under ``--save`` or a temporary folder, :mod:`megaraptr.runtime.pipe.repartition`);
- checkpoints are written and read by :mod:`megaraptr.runtime.pipe.repartition` (any partition);
- ``raptr/pipeline_imbalance`` (busiest stage's predicted time / mean, for the step's
  partition and stage) and ``raptr/pipeline_busiest_layers`` (most layers one stage ran)
  go to TensorBoard with the step's other scalars.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Callable, List, Optional

import torch

from megaraptr.data import make_batches
from megaraptr.models import build_model
from megaraptr.planning.balance import Costs, imbalance
from megaraptr.planning.profiling import measure_costs
from megaraptr.runtime.checkpoints import Resume
from megaraptr.runtime.distributed import device as accelerator_device
from megaraptr.runtime.pipe import engine as pipeline, repartition
from megaraptr.runtime.tp import apply_tensor_parallel, pipeline_groups
from megaraptr.tools.preflight import RunPlan
from megaraptr.tools.resume_check import run_facts
from megaraptr.tools.train_data import RunData


class PipelineRun:
    """The pipeline engine of a ``megaraptr.tools.train`` run and its re-partitioning (the
    interface of :class:`megaraptr.tools.train_setup.TrainSetup`)."""

    inputs = None  # the pipeline reads (inputs, labels) pairs made from the batch dicts

    def __init__(self, plan: RunPlan, data: RunData, resume: Optional[Resume] = None):
        flags = plan.flags
        self.flags, self.ds_config = flags, dict(plan.ds_config)
        self.override_schedule = flags.override_raptr_schedule
        self.keep, self.run = flags.keep_checkpoints, run_facts(flags)
        self.sampler_seed = plan.sampler_seed
        torch.manual_seed(flags.seed)  # the reference model's weights: a function of --seed
        reference = build_model(flags.model, flags.size, vocab_size=data.vocab_size,
                                seq_len=flags.seq_len, dropout=flags.dropout)
        self.num_parameters = sum(p.numel() for p in reference.parameters())
        self.cfg = reference.cfg
        self.resumed = (resume.state("raptr") if resume is not None else None) or {}
        """megaraptr's state in the checkpoint being resumed (empty for a new run)."""
        self.groups = pipeline_groups(self.ds_config, flags.pipeline_stages)
        """The tensor-parallel groups (None without tensor parallelism), made once per run."""
        self.costs, self.cost_source = self._costs(plan.raptr, reference, data.prepared)
        self._reference = reference
        self._scratch = None
        self.engine = self.build(None)
        self._reference = None  # weights now live in the stages (and in checkpoints)

    def _costs(self, raptr_config, reference, data):
        spec = raptr_config.pipeline
        if spec is not None and spec.costs is not None:
            return Costs.from_spec(spec.costs), "config"
        saved = (self.resumed.get("pipeline") or {}).get("costs")
        if saved:
            return Costs(**saved), "checkpoint"

        micro = self.ds_config.get("train_micro_batch_size_per_gpu", 1)
        batch = make_batches(data, seq_len=self.flags.seq_len, seed=self.flags.seed,
                             micro_batch_size=micro, grad_accum=1).step_batches(1)[0]
        device = accelerator_device()
        dtype = torch.bfloat16 if self.ds_config.get("bf16", {}).get("enabled") else None
        repeats = spec.profile_steps if spec is not None else 3
        model = reference
        if self.groups is not None:  # the layer as it runs: its shard and its all-reduces
            model = copy.deepcopy(reference)
            apply_tensor_parallel(model, rank=self.groups.tensor_index,
                                  size=self.groups.tensor_size, group=self.groups.tensor_group)
        return measure_costs(model, batch, repeats=repeats, device=device,
                             dtype=dtype), "profile"

    def build(self, layer_parts):
        """The engine of ``layer_parts`` (None: the plan's for the next step to train)."""
        return pipeline.initialize(
            self.flags.model, self.cfg, config=dict(self.ds_config),
            num_stages=self.flags.pipeline_stages, total_steps=self.flags.train_steps,
            seed=self.sampler_seed, costs=self.costs, reference=self._reference,
            layer_parts=layer_parts, first_step=self.resumed.get("applied_steps", 0) + 1,
            groups=self.groups)

    def load(self, resume: Resume) -> dict:
        _, client_state = repartition.load(self.engine, resume.load_dir, resume.tag, verify=False,
                                           override_schedule=self.override_schedule)
        return client_state or {}

    def save(self, save_dir: str, tag: str, client_state: dict) -> None:
        repartition.save(self.engine, save_dir, tag, client_state, run=self.run, keep=self.keep)

    def next_engine(self, client_state: Callable[[], dict]):
        """The engine for the next step: this one, or a re-partitioned one (through a
        checkpoint with ``client_state()``, under --save or a scratch folder)."""
        engine = self.engine
        if engine.needs_repartition() is None:
            return engine
        save_dir, keep = self.flags.save, self.keep
        if save_dir is None:
            keep = 1  # the scratch folder needs the hand-over checkpoint only
            if self._scratch is None:
                self._scratch = _shared_tempdir()
            save_dir = self._scratch
        old = engine.layer_parts
        engine, _ = repartition.repartition(engine, self.build, save_dir,
                                            client_state=client_state(), run=self.run, keep=keep)
        if torch.distributed.get_rank() == 0:
            print(f"megaraptr: step {engine.applied_steps + 1}: re-partitioned the pipeline "
                  f"{list(old)} -> {list(engine.layer_parts)} (predicted imbalance "
                  f"{engine.imbalance():.3f})", flush=True)
        self.engine = engine
        return engine

    def events(self, result) -> List:
        engine = self.engine
        parts, active = engine.layer_parts, result.mask.active
        busiest = max(sum(active[a:b]) for a, b in zip(parts[:-1], parts[1:]))
        return [("raptr/pipeline_imbalance", imbalance(engine.costs, parts, result.stage),
                 result.step),
                ("raptr/pipeline_busiest_layers", float(busiest), result.step)]

    def summary(self) -> dict:
        """The summary JSON's "pipeline" entry."""
        engine = self.engine
        return {"stages": engine.num_stages, "partition": list(engine.layer_parts),
                "plan": [list(p) for p in engine.partitions], "costs": vars(self.costs).copy(),
                "cost_source": self.cost_source}

    def describe(self) -> List[str]:
        engine = self.engine
        layout = "" if self.groups is None else f" x {self.groups.tensor_size} tensor-parallel"
        lines = [f"pipeline: {engine.num_stages} stages x {engine.data_parallel_size} data-"
                 f"parallel{layout}; costs ({self.cost_source}): layer {self.costs.layer:.4g}, "
                 f"embedding {self.costs.embedding:.4g}, head {self.costs.head:.4g}"]
        for stage, parts in zip(engine.schedule.stages, engine.partitions):
            lines.append(f"  stage {stage.name}: partition {list(parts)}, predicted imbalance "
                         f"{imbalance(engine.costs, parts, stage):.3f}")
        return lines

    def close(self) -> None:
        if self._scratch is not None and torch.distributed.get_rank() == 0:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _shared_tempdir() -> str:
    """A folder all ranks of this node share (rank 0 makes it, the others learn its name)."""
    names: List[Optional[str]] = [tempfile.mkdtemp(prefix="megaraptr-repartition-")
                                  if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(names, src=0)
    os.makedirs(names[0], exist_ok=True)
    return names[0]
