"""Everything ``megaraptr.tools.train`` checks before expensive work, and what the run decides.

:func:`validate` runs before the process group, the data cache or the model exist: the model
name and size, the raptr block and its schedule against the model's depth and the run's length,
the pipeline, kernels and objective flags, and a checkpoint to resume (its schedule, seed and
objective). Every failure is one line naming the flag or key and what is allowed (exit 2 from
the command line). ``megaraptr-config validate`` runs the same function.
:func:`prepare_ds_config` fills what the run decides: the default optimizer, the scheduler's
length and the TensorBoard job name.
"""
from __future__ import annotations

import os

import torch

from megaraptr.data.ul2 import paper_mixture
from megaraptr.errors import ConfigError
from megaraptr.kernels import resolve_kernels
from megaraptr.methods import build_schedule, method_name, split_ds_config
from megaraptr.models import DATA_KIND, MODELS, num_layers
from megaraptr.models.hf import data_kind, hf_config, is_hf, model_label
from megaraptr.runtime.pipe.engine import check_pipeline
from megaraptr.runtime.resume_state import check_compatible, find_checkpoint, read_raptr_state


def prepare_ds_config(args, ds_config: dict, method: str) -> dict:
    """Fill what the run decides: the default optimizer, the scheduler's length (the run's
    --train-steps) and the TensorBoard job name when the config leaves it out."""
    ds_config.setdefault("optimizer", {"type": "AdamW", "params": {
        "lr": args.lr, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01,
        "torch_adam": True}})
    scheduler = ds_config.get("scheduler")
    params = scheduler.setdefault("params", {}) if scheduler else {}
    if "total_num_steps" in params or \
            (scheduler or {}).get("type") in ("WarmupDecayLR", "WarmupCosineLR"):
        before = params.get("total_num_steps")
        params["total_num_steps"] = args.train_steps
        if before not in (None, "auto", args.train_steps):
            args.notes.append(f"scheduler.params.total_num_steps {before} -> {args.train_steps} "
                              "(--train-steps)")
    board = ds_config.get("tensorboard")
    if board is not None and "job_name" not in board:
        board["job_name"] = f"{args.model_label}-{args.size}-{method}-seed{args.seed}"
    return ds_config


def model_facts(args) -> tuple:
    """(layers, data kind, label) of --model, checked before anything is built."""
    if is_hf(args.model):

        if args.pipeline_stages:
            raise ConfigError("--pipeline-stages", "not supported with Hugging Face models "
                              "(--model hf:...); use ZeRO data parallelism")
        if args.activation_checkpointing == "deepspeed":
            raise ConfigError("--activation-checkpointing", '"deepspeed" is not supported with '
                              "Hugging Face models; allowed: none, torch")
        config = hf_config(args.model, size=args.size, seq_len=args.seq_len)
        return config.num_hidden_layers, data_kind(config), model_label(args.model, config)
    if args.model not in MODELS:
        raise ConfigError("--model", f"{args.model!r}; allowed: {', '.join(sorted(MODELS))}, "
                          "hf:bert, hf:gpt2, hf:llama, hf:PATH (a local config.json)")
    return num_layers(args.size), DATA_KIND[args.model], args.model


def validate(args):
    """Everything that can be checked before expensive work; returns (raptr, ds_config)."""
    depth, args.data_kind, args.model_label = model_facts(args)
    raptr_config, ds_config = split_ds_config(args.deepspeed_config)
    if getattr(args, "kernels", None):
        raptr_config = raptr_config.model_copy(update={"kernels": args.kernels})
    schedule = build_schedule(raptr_config, num_layers=depth, total_steps=args.train_steps)
    if args.pipeline_stages:

        check_pipeline(args.pipeline_stages, depth, ds_config, raptr_config)
        if args.activation_checkpointing != "none":
            raise ConfigError("--activation-checkpointing", "not supported with "
                              "--pipeline-stages; allowed: none")
        if raptr_config.kernels not in ("eager", "auto"):  # auto: eager, the one available
            raise ConfigError("raptr.kernels", f'"{raptr_config.kernels}" is not supported with '
                              '--pipeline-stages yet; allowed: "eager" or "auto" (eager there)')
    else:
        check_kernels(raptr_config.kernels, ds_config)
    check_objective(args)
    if args.exit_at_step is not None and not args.save:
        raise ConfigError("--exit-at-step", "needs --save DIR to write the checkpoint")
    if args.exit_at_step is not None and not 1 <= args.exit_at_step <= args.train_steps:
        raise ConfigError("--exit-at-step", f"{args.exit_at_step} is outside 1..{args.train_steps}")
    if args.load:
        path = find_checkpoint(args.load)
        seed = raptr_config.seed if raptr_config.seed is not None else args.seed
        check_compatible(read_raptr_state(path), schedule, seed, path,
                         args.override_raptr_schedule)
        saved = (read_raptr_state(path, "train") or {}).get("objective", "causal")
        if args.model == "gpt" and saved != args.objective:
            raise ConfigError("--objective", f"{args.objective}, but {path} was trained with "
                              f"--objective {saved} (another vocabulary); allowed: {saved}")
    ds_config["raptr"] = raptr_config.model_dump(exclude_none=True)
    return raptr_config, prepare_ds_config(args, ds_config, method_name(raptr_config))


def check_objective(args) -> None:
    """--objective ul2 trains the GPT model without a pipeline; --ul2-s-share needs it."""
    if args.objective == "ul2" and args.model != "gpt":
        raise ConfigError("--objective", f"ul2 trains the causal GPT model; use --model gpt "
                          f"(--model {args.model} trains its own objective)")
    if args.objective == "ul2" and args.pipeline_stages:
        raise ConfigError("--objective", "ul2 is not supported with --pipeline-stages yet")
    if args.ul2_s_share is not None and args.objective != "ul2":
        raise ConfigError("--ul2-s-share", "needs --objective ul2")
    if args.objective == "ul2":

        paper_mixture(args.ul2_s_share)  # checks the share


def check_kernels(mode: str, ds_config: dict) -> None:
    """Refuse a kernels mode that cannot run here (e.g. "compiled" under ZeRO-3) up front."""

    cuda = os.environ.get("DS_ACCELERATOR", "cuda") == "cuda" and torch.cuda.is_available()
    resolve_kernels(mode, device="cuda" if cuda else "cpu",
                    zero_stage=int((ds_config.get("zero_optimization") or {}).get("stage", 0)))
