"""Training's checks of a tensor-parallel layout, before anything is built.

:func:`check_parallel` is what :func:`megaraptr.tools.preflight.validate` (and so
``megaraptr-config validate``) runs for ``"tensor_parallel": {"autotp_size": T}``: the world
size against T x P, the model's attention heads (key-value heads too) and FFN width against T,
and what tensor parallelism does not run with (ZeRO-3, fp16, compiled kernels, DeepSpeed's
activation checkpointing, models other than the reference BERT/GPT, hf:gpt2 and hf:llama).
Each failure is one line naming the key or flag. A checkpoint written under another T is
refused where the resume point is known (``validate``, for --load DIR and --load auto alike).
"""
from __future__ import annotations

import os
from typing import Optional

from megaraptr.errors import ConfigError
from megaraptr.models import SIZES
from megaraptr.models.hf import hf_config, is_hf
from megaraptr.planning.layout import (KEY, Layout, check_layout, check_shape,
                                       check_tensor_parallel, tensor_parallel_size)
from megaraptr.tools.train_args import TrainFlags

HF_FAMILIES = ("gpt2", "llama")
"""Hugging Face model types megaraptr's tensor parallelism splits."""


def world_size(given: Optional[int] = None) -> int:
    """The run's world size: ``given``, else the launcher's ``WORLD_SIZE``, else 1."""
    if given is not None:
        return given
    return int(os.environ.get("WORLD_SIZE", "1"))


def model_shape(flags: TrainFlags) -> dict:
    """heads, kv_heads, ffn of --model (one line for a model family T cannot split)."""
    if not is_hf(flags.model):
        size = SIZES[flags.size]
        return {"heads": size["heads"], "kv_heads": None, "ffn": size["ffn"]}
    config = hf_config(flags.model, size=flags.size, seq_len=flags.seq_len)
    if config.model_type not in HF_FAMILIES:
        raise ConfigError(KEY, f"model type {config.model_type!r} ({flags.model}) with tensor "
                          f"parallelism; allowed: the reference bert and gpt, "
                          f"{', '.join('hf:' + m for m in HF_FAMILIES)} (or autotp_size 1)")
    if config.model_type == "gpt2":
        return {"heads": config.n_head, "kv_heads": None,
                "ffn": config.n_inner or 4 * config.n_embd}
    return {"heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
            "ffn": config.intermediate_size}


def check_parallel(flags: TrainFlags, ds_config: dict,
                   world: Optional[int] = None) -> Optional[Layout]:
    """The run's layout when ``ds_config`` asks for tensor parallelism (else None).

    Args:
        world: the world size (default: the launcher's ``WORLD_SIZE``, else 1).

    Raises:
        ConfigError: the one line training prints (exit 2).
    """
    tensor = tensor_parallel_size(ds_config)
    if tensor == 1:
        return None
    pipeline = flags.pipeline_stages or 1
    check_tensor_parallel(ds_config, tensor=tensor, pipeline=bool(flags.pipeline_stages))
    layout = check_layout(world=world_size(world), tensor=tensor, pipeline=pipeline)
    check_shape(tensor=tensor, model=flags.model, **model_shape(flags))
    if flags.activation_checkpointing == "deepspeed":
        raise ConfigError("--activation-checkpointing", f'"deepspeed" with {KEY} {tensor} is '
                          "not supported; allowed: none, torch")
    return layout
