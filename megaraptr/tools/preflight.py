"""Everything ``megaraptr.tools.train`` checks before expensive work, and what the run decides.

:func:`validate` runs before the process group, the data cache or the model exist: the model
name and size, the raptr block and its schedule against the model's depth and the run's length,
the pipeline, tensor-parallel layout (:mod:`megaraptr.tools.parallel_check`), kernels and
objective flags, and a checkpoint to resume (:mod:`megaraptr.tools.resume_check`: found, its
files' sizes checked against its manifest, every pickle read with the weights-only loader, and
compared with the run: schedule, seed, model, batch, ZeRO stage, tensor-parallel size, ...).
Every failure is one line naming the flag or key and what is allowed (exit 2 from the command
line). ``megaraptr-config validate`` runs the same function.
What it resolves comes back as one frozen :class:`RunPlan` (model facts, the DeepSpeed config
with what the run decides filled in by :func:`prepare_ds_config`, the sampler seed, the notes
to print), built once and read by every later part of the run; the flags are never written.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import torch

from megaraptr.core.config import RaptrConfig, scheduler_warmup_note
from megaraptr.data.ul2 import paper_mixture
from megaraptr.errors import ConfigError
from megaraptr.kernels import resolve_kernels
from megaraptr.methods import build_schedule, method_name, split_ds_config
from megaraptr.models import DATA_KIND, MODELS, num_layers
from megaraptr.models.hf import data_kind, hf_config, is_hf, model_label
from megaraptr.planning.layout import Layout, tensor_parallel_size
from megaraptr.runtime.checkpoints import Resume
from megaraptr.runtime.pipe.engine import check_pipeline
from megaraptr.runtime.resume_state import check_saved_tensor_parallel
from megaraptr.tools import resume_check
from megaraptr.tools.output_checks import (MONITORS, RUN_ID, check_job_name, check_summary_path,
                                           new_run_id, safe_job_name)
from megaraptr.tools.parallel_check import check_parallel
from megaraptr.tools.train_args import TrainFlags


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One training run, resolved from its flags before anything expensive is built."""

    flags: TrainFlags
    raptr: RaptrConfig
    """The validated raptr block (``--kernels`` applied)."""
    ds_config: dict
    """The DeepSpeed config the run passes on: its raptr block and what the run decided
    (:func:`prepare_ds_config`). Read-only: the engines' initializers copy it."""
    num_layers: int
    data_kind: str
    """"mlm" or "causal": what the model trains on."""
    model_label: str
    """The model's name in TensorBoard's job name (hf:PATH models: their type)."""
    method: str
    sampler_seed: int
    """The subnetwork sampler's seed: the raptr block's ``seed`` if set, else --seed."""
    notes: Tuple[str, ...]
    """What the run changed in the config, printed once it starts."""
    layout: Optional[Layout] = None
    """The TP x PP x DP layout under tensor parallelism (None without it)."""
    resume: Optional[Resume] = None
    """The checkpoint --load resumes (--load DIR, or --load auto's pick), as preflight found it
    (its files' sizes checked); None: a fresh start. The run verifies the checksums on all
    ranks before it builds the model and keeps here the checkpoint it resumes."""
    run_id: Optional[str] = None
    """The run's id (in the derived TensorBoard job name): new on a fresh start, the
    checkpoint's on a resume (None: a checkpoint from before run ids, whose folder had none)."""

    @property
    def objective(self) -> str:
        """What the model trains on: "mlm", "causal" or "ul2"."""
        return "ul2" if self.flags.objective == "ul2" else self.data_kind


def prepare_ds_config(flags: TrainFlags, ds_config: dict, *, method: str, label: str,
                      run_id: Optional[str] = None) -> Tuple[dict, Tuple[str, ...]]:
    """Fill what the run decides: the default optimizer, the scheduler's length (the run's
    --train-steps) and the TensorBoard job name when the config leaves it out; returns the
    config and the notes saying what changed."""
    notes = []
    ds_config.setdefault("optimizer", {"type": "AdamW", "params": {
        "lr": flags.lr, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01,
        "torch_adam": True}})
    scheduler = ds_config.get("scheduler")
    params = scheduler.setdefault("params", {}) if scheduler else {}
    if "total_num_steps" in params or \
            (scheduler or {}).get("type") in ("WarmupDecayLR", "WarmupCosineLR"):
        before = params.get("total_num_steps")
        params["total_num_steps"] = flags.train_steps
        if before not in (None, "auto", flags.train_steps):
            notes.append(f"scheduler.params.total_num_steps {before} -> {flags.train_steps} "
                         "(--train-steps)")
    warmup = scheduler_warmup_note(ds_config, flags.train_steps)
    if warmup is not None:
        notes.append(warmup)
    for block in MONITORS:  # a folder under output_path: one plain name
        if "job_name" in (ds_config.get(block) or {}):
            check_job_name(block, ds_config[block]["job_name"])
    board = ds_config.get("tensorboard")
    if board is not None and "job_name" not in board:
        run = f"-{run_id}" if run_id else ""  # each run its own folder; a resume its run's
        board["job_name"] = safe_job_name(f"{label}-{flags.size}-{method}-seed{flags.seed}{run}")
    return ds_config, tuple(notes)


def model_facts(flags: TrainFlags) -> tuple:
    """(layers, data kind, label) of --model, checked before anything is built."""
    if is_hf(flags.model):

        if flags.pipeline_stages:
            raise ConfigError("--pipeline-stages", "not supported with Hugging Face models "
                              "(--model hf:...); use ZeRO data parallelism")
        if flags.activation_checkpointing == "deepspeed":
            raise ConfigError("--activation-checkpointing", '"deepspeed" is not supported with '
                              "Hugging Face models; allowed: none, torch")
        config = hf_config(flags.model, size=flags.size, seq_len=flags.seq_len)
        return config.num_hidden_layers, data_kind(config), model_label(flags.model, config)
    if flags.model not in MODELS:
        raise ConfigError("--model", f"{flags.model!r}; allowed: {', '.join(sorted(MODELS))}, "
                          "hf:bert, hf:gpt2, hf:llama, hf:PATH (a local config.json)")
    return num_layers(flags.size), DATA_KIND[flags.model], flags.model


def validate(flags: TrainFlags, world_size: Optional[int] = None, *,
             verify: str = "sizes") -> RunPlan:
    """Everything that can be checked before expensive work; returns the resolved run.

    ``world_size``: default the launcher's WORLD_SIZE, else 1. ``verify``: how far the
    checkpoint to resume is verified here ("sizes": every file of its manifest present with its
    size; "checksums": and its sha256, as ``megaraptr-config validate`` does; training hashes
    on all ranks together once the process group exists).
    """
    depth, kind, label = model_facts(flags)
    raptr_config, ds_config = split_ds_config(flags.deepspeed_config)
    if flags.kernels:
        raptr_config = raptr_config.model_copy(update={"kernels": flags.kernels})
    schedule = build_schedule(raptr_config, num_layers=depth, total_steps=flags.train_steps)
    if flags.pipeline_stages:

        check_pipeline(flags.pipeline_stages, depth, ds_config, raptr_config)
        if flags.activation_checkpointing != "none":
            raise ConfigError("--activation-checkpointing", "not supported with "
                              "--pipeline-stages; allowed: none")
        if raptr_config.kernels not in ("eager", "auto"):  # auto: eager, the one available
            raise ConfigError("raptr.kernels", f'"{raptr_config.kernels}" is not supported with '
                              '--pipeline-stages yet; allowed: "eager" or "auto" (eager there)')
    else:
        check_kernels(raptr_config.kernels, ds_config)
    layout = check_parallel(flags, ds_config, world_size)
    check_objective(flags)
    if flags.exit_at_step is not None and not flags.save:
        raise ConfigError("--exit-at-step", "needs --save DIR to write the checkpoint")
    if flags.exit_at_step is not None and not 1 <= flags.exit_at_step <= flags.train_steps:
        raise ConfigError("--exit-at-step",
                          f"{flags.exit_at_step} is outside 1..{flags.train_steps}")
    check_outputs(flags, raptr_config, ds_config)
    sampler_seed = raptr_config.sampler_seed(flags.seed)  # the one place it is resolved
    resume_check.check_config(ds_config)
    resume = resume_check.find(flags, verify=verify) if flags.load else None
    run_id = new_run_id()
    resume_notes = []
    if resume is not None:
        rank = int(os.environ.get("RANK", 0))
        world = world_size or int(os.environ.get("WORLD_SIZE", 1))
        resume_check.scan(resume, rank, world)  # each rank reads its share of the pickles
        resume_notes = resume_check.check(flags, ds_config, resume, schedule=schedule,
                                          sampler_seed=sampler_seed, world=world)
        check_saved_tensor_parallel(resume.state(), tensor_parallel_size(ds_config), resume.path)
        saved_id = (resume.state("train") or {}).get("run_id")  # its TensorBoard folder's
        run_id = saved_id if isinstance(saved_id, str) and RUN_ID.fullmatch(saved_id) else None
    ds_config["raptr"] = raptr_config.model_dump(exclude_none=True)
    method = method_name(raptr_config)
    ds_config, notes = prepare_ds_config(flags, ds_config, method=method, label=label,
                                         run_id=run_id)
    if flags.load == resume_check.AUTO:
        notes += (f"--load auto: resuming from {resume.path}" if resume else
                  f"--load auto: no checkpoint under {flags.save} yet: a fresh start",)
    return RunPlan(flags=flags, raptr=raptr_config, ds_config=ds_config, num_layers=depth,
                   data_kind=kind, model_label=label, method=method,
                   sampler_seed=sampler_seed, notes=tuple(resume_notes) + notes, resume=resume,
                   run_id=run_id, layout=layout)


def check_outputs(flags: TrainFlags, raptr_config: RaptrConfig, ds_config: dict) -> None:
    """--summary's path, the save flags, and a divergence mode DeepSpeed can carry out."""
    if flags.summary:
        check_summary_path(flags.summary)
    if flags.save_every_minutes and not flags.save:
        raise ConfigError("--save-every-minutes", "needs --save DIR to write the checkpoints")
    bf16 = ds_config.get("bf16") or ds_config.get("bfloat16") or {}
    if raptr_config.on_nonfinite == "skip_step" and bf16.get("enabled") and \
            bf16.get("check_grad_overflow") is False:
        raise ConfigError("raptr.on_nonfinite", '"skip_step" needs DeepSpeed to skip steps '
                          'whose gradient norm is not finite: remove "check_grad_overflow": '
                          'false from the "bf16" block, or use "stop"')


def check_objective(flags: TrainFlags) -> None:
    """--objective ul2 trains the GPT model without a pipeline; --ul2-s-share needs it."""
    if flags.objective == "ul2" and flags.model != "gpt":
        raise ConfigError("--objective", f"ul2 trains the causal GPT model; use --model gpt "
                          f"(--model {flags.model} trains its own objective)")
    if flags.objective == "ul2" and flags.pipeline_stages:
        raise ConfigError("--objective", "ul2 is not supported with --pipeline-stages yet")
    if flags.ul2_s_share is not None and flags.objective != "ul2":
        raise ConfigError("--ul2-s-share", "needs --objective ul2")
    if flags.objective == "ul2":

        paper_mixture(flags.ul2_s_share)  # checks the share


def check_kernels(mode: str, ds_config: dict) -> None:
    """Refuse a kernels mode that cannot run here (e.g. "compiled" under ZeRO-3) up front."""

    cuda = os.environ.get("DS_ACCELERATOR", "cuda") == "cuda" and torch.cuda.is_available()
    resolve_kernels(mode, device="cuda" if cuda else "cpu",
                    zero_stage=int((ds_config.get("zero_optimization") or {}).get("stage", 0)),
                    tensor_parallel=tensor_parallel_size(ds_config))
