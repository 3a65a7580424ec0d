"""Hugging Face transformers models under RAPTR, with their own parameter names.

:func:`adapt` turns a transformers model into one that follows megaraptr's block contract
(``megaraptr.core.block``) in place: it finds the layer stack (BERT ``encoder.layer``, GPT-2 ``h``,
Llama ``layers``; other models: the one ``ModuleList`` of the classes named in
``_no_split_modules``), gives each layer its global id and patches the layer *instance's*
``forward`` so that a skipped layer returns its input and runs nothing. The model's own loop
still builds the attention mask, positions and rotary embeddings once and hands them to every
layer; nothing is wrapped or renamed, so ``state_dict()`` keys are unchanged.

Residual scale ``s`` (``"scaling": "inverse_keep_prob"``) multiplies the output of each residual
branch's last projection (BERT ``attention.output.dense`` and ``output.dense``, before dropout
and the post-LN add: ``LN(x + s * f(x))``; GPT-2 ``attn.c_proj`` and ``mlp.c_proj``; Llama
``o_proj`` and ``down_proj``: ``x + s * f(...)``), as in megaraptr's own blocks. Models adapted
generically know no branches and refuse ``s != 1``.

Usage::

    model = build_hf_model("hf:gpt2", size="tiny", vocab_size=8192, seq_len=128)
    model = adapt(GPT2LMHeadModel(config))              # or adapt a model you built
    engine.train_step([causal_inputs(b) for b in batches])  # data labels already shifted

transformers is imported only when a config or a model is built (``import megaraptr.models.hf``
is cheap).
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import types
from typing import Optional, Sequence

import torch
from torch import nn

from megaraptr.core.block import SKIPPABLE, is_skipped, mark_block, residual_scale
from megaraptr.errors import ConfigError
from megaraptr.models import SIZES

PREFIX = "hf:"
NAMES = ("bert", "gpt2", "llama")
STACKS = {"bert": "encoder.layer", "gpt2": "h", "llama": "layers"}
"""The layer ``ModuleList`` of each known model type, relative to ``model.base_model``."""
BRANCHES = {"bert": ("attention.output.dense", "crossattention.output.dense", "output.dense"),
            "gpt2": ("attn.c_proj", "crossattention.c_proj", "mlp.c_proj"),
            "llama": ("self_attn.o_proj", "mlp.down_proj")}
"""The last projection of each residual branch inside one layer (absent ones are skipped)."""


def is_hf(model: str) -> bool:
    return model.startswith(PREFIX)


class _Format:
    """What the layers of one stack return: a tensor, or a tuple of ``length`` (learnt from
    the first layer that ran; shared by the stack's layers)."""

    def __init__(self, tensor: bool):
        self.known, self.length = tensor, None

    def skip(self, layer: nn.Module, hidden: torch.Tensor):
        if not self.known:
            raise ConfigError("raptr.fixed_layers", f"layer {layer.layer_id} "
                              f"({type(layer).__name__}) was skipped before any layer of its "
                              "stack ran, so its output format is unknown; keep layer 0 fixed")
        return hidden if self.length is None else (hidden,) + (None,) * (self.length - 1)

    def learn(self, output) -> None:
        if not self.known:
            self.known = True
            self.length = len(output) if isinstance(output, tuple) else None


def _raptr_forward(self, *args, **kwargs):
    """The adapted layer's forward: the class's forward, or the layer's input when skipped."""
    if is_skipped(self):
        self.raptr_skips += 1
        return self.raptr_format.skip(self, args[0] if args else kwargs["hidden_states"])
    if self.training and self.raptr_scale != 1.0 and not self.raptr_branches:
        raise ConfigError("raptr.scaling", f"{type(self).__name__} was adapted without known "
                          'residual branches; use "scaling": "none" or adapt(model, branches=...)')
    output = type(self).forward(self, *args, **kwargs)  # HF's checkpointing wrapper included
    self.raptr_format.learn(output)
    return output


setattr(_raptr_forward, SKIPPABLE, True)  # the block contract's skip branch (core.block)


def _scale_branch(layer: nn.Module, module: nn.Module, inputs, output):
    """Forward hook on a residual branch's last projection: output times the layer's scale."""
    scale = residual_scale(layer)
    return None if scale == 1.0 else output * scale


def _returns_tensor(layer: nn.Module) -> bool:
    annotation = inspect.signature(type(layer).forward).return_annotation
    return annotation in (torch.Tensor, "torch.Tensor")


def find_stack(model: nn.Module) -> nn.ModuleList:
    """The model's layer ``ModuleList``: the known path of its model type, else the one
    ``ModuleList`` whose modules are all of one class named in ``_no_split_modules``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    base = getattr(model, "base_model", model)
    if model_type in STACKS:
        return base.get_submodule(STACKS[model_type])
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)
             and len(m) > 0 and len({type(c) for c in m}) == 1 and type(m[0]).__name__ in names]
    if len(found) != 1:
        what = "none" if not found else ", ".join(name for name, _ in found)
        raise ConfigError("model", f"{type(model).__name__}: expected one ModuleList of the "
                          f"layer classes in _no_split_modules {sorted(names)}, found {what}; "
                          f"known: {', '.join(NAMES)}")
    return found[0][1]


def adapt(model: nn.Module, *, stack: Optional[nn.ModuleList] = None,
          branches: Optional[Sequence[str]] = None) -> nn.Module:
    """Make a transformers model's layers RAPTR blocks, in place; returns the same model.

    Args:
        model: A transformers ``PreTrainedModel`` (or any module with such a layer stack).
        stack: The layer ``ModuleList`` (default: :func:`find_stack`).
        branches: Each layer's residual-branch output modules, relative to the layer (default:
            the known ones of bert, gpt2, llama; none for other models: no residual scaling).

    Also sets ``config.use_cache = False``: a skipped layer would leave a hole in a KV cache.
    """
    layers = find_stack(model) if stack is None else stack
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    branches = tuple(BRANCHES.get(model_type, ()) if branches is None else branches)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    fmt = _Format(tensor=_returns_tensor(layers[0]))
    for i, layer in enumerate(layers):
        if getattr(layer, "raptr_format", None) is not None:
            raise ConfigError("model", f"{type(model).__name__} is already adapted")
        mark_block(layer, i)
        layer.raptr_format = fmt
        layer.raptr_branches = tuple(b for b in branches if _has(layer, b))
        for name in layer.raptr_branches:
            layer.get_submodule(name).register_forward_hook(functools.partial(_scale_branch, layer))
        layer.forward = types.MethodType(_raptr_forward, layer)
    return model


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def causal_inputs(batch: dict) -> dict:
    """A causal batch of the data pipeline (``labels`` already shifted by one) as inputs of a
    transformers causal LM: ``shift_labels`` tells its loss not to shift again, so every one
    of the T labels is predicted, as in megaraptr's GPT."""
    return dict(batch, shift_labels=batch["labels"])


# ------------------------------------------------------------------ building from a config


def _shape_config(name: str, size: str, vocab_size: int, seq_len: int, dropout: float):
    from transformers import BertConfig, GPT2Config, LlamaConfig


    s = SIZES[size]
    if name == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=s["hidden"],
                          num_hidden_layers=s["num_layers"], num_attention_heads=s["heads"],
                          intermediate_size=s["ffn"], max_position_embeddings=seq_len,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if name == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=s["hidden"], n_layer=s["num_layers"],
                          n_head=s["heads"], n_inner=s["ffn"], n_positions=seq_len,
                          resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                          bos_token_id=None, eos_token_id=None)
    kv_heads = s["heads"] // 2 if s["heads"] % 2 == 0 else s["heads"]  # grouped-query attention
    return LlamaConfig(vocab_size=vocab_size, hidden_size=s["hidden"],
                       num_hidden_layers=s["num_layers"], num_attention_heads=s["heads"],
                       num_key_value_heads=kv_heads, intermediate_size=s["ffn"],
                       max_position_embeddings=seq_len, attention_dropout=dropout,
                       bos_token_id=None, eos_token_id=None)


def hf_config(model: str, *, size: str = "tiny", vocab_size: Optional[int] = None,
              seq_len: int = 128, dropout: float = 0.0):
    """The transformers config of ``hf:bert|gpt2|llama`` (the shape of ``size``) or of
    ``hf:PATH`` (a local ``config.json`` or a folder holding one; its own dropout). The
    tokenizer's ``vocab_size`` replaces the config's when given. Nothing is downloaded.

    Raises:
        ConfigError: an unknown name, a missing or unreadable path, too few positions.
    """
    name = model[len(PREFIX):] if is_hf(model) else model
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError("--model", f"{model} needs transformers: pip install transformers")
    if name in NAMES:
        return _shape_config(name, size, vocab_size or 8192, seq_len, dropout)
    path = name
    if not (os.path.isfile(path) or os.path.isfile(os.path.join(path, "config.json"))):
        raise ConfigError("--model", f"{model!r}: not {', '.join(PREFIX + n for n in NAMES)} "
                          "nor a local config.json (file or folder)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError("--model", f"{path}: {str(err).splitlines()[0]}") from None
    if vocab_size is not None:
        config.vocab_size = vocab_size
    positions = getattr(config, "max_position_embeddings", None)
    rotary = any(getattr(config, k, None) is not None for k in ("rope_parameters", "rope_theta"))
    if isinstance(positions, int) and positions < seq_len and not rotary:
        raise ConfigError("--seq-len", f"{seq_len} is above {path}'s max_position_embeddings "
                          f"{positions}")
    data_kind(config)  # refuses what is neither a masked nor a causal LM
    return config


def data_kind(config) -> str:
    """"mlm" for a masked LM (an encoder such as BERT), "causal" for a causal LM."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_decoder:
        return "mlm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ConfigError("--model", f"model type {config.model_type!r} is neither a masked nor a "
                      "causal LM in transformers")


def hf_model(config) -> nn.Module:
    """A freshly initialised (torch's RNG) masked or causal LM of ``config``, not adapted."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    kind = data_kind(config)
    model = (AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM).from_config(config)
    if kind == "causal":
        model.loss_type = "ForCausalLM"  # GPT2LMHeadModel's class name does not say it
    return model


def build_hf_model(name_or_config_path: str, *, vocab_size: int, seq_len: int,
                   size: str = "tiny", dropout: float = 0.0, checkpoint: str = "none"):
    """:func:`hf_config` -> :func:`hf_model` -> :func:`adapt`; ``checkpoint="torch"`` turns on
    transformers' gradient checkpointing (non-reentrant; the skip is decided outside it)."""
    if checkpoint not in ("none", "torch"):
        raise ConfigError("--activation-checkpointing", f"{checkpoint!r} is not supported with "
                          "Hugging Face models; allowed: none, torch")
    model = adapt(hf_model(hf_config(name_or_config_path, size=size, vocab_size=vocab_size,
                                     seq_len=seq_len, dropout=dropout)))
    if checkpoint == "torch":
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def model_label(model: str, config) -> str:
    """A file-name-safe label: ``hf-gpt2``, or ``hf-<model_type>`` for a config path."""
    name = model[len(PREFIX):]
    return f"hf-{name if name in NAMES else config.model_type}"
