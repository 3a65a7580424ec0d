"""Tensor parallelism applied to a model's blocks from outside the model file.

:func:`apply_tensor_parallel` walks the marked blocks (the reference ``Block``, transformers'
``GPT2Block`` and ``LlamaDecoderLayer``) and, per :data:`PLANS`, makes each block's attention
and MLP one tensor-parallel region (:mod:`megaraptr.runtime.tp.layers`): attention heads and FFN
columns are split evenly over the T ranks of the tensor-parallel group; layer norms, embeddings
and the output head stay replicated (every rank computes them in full). Call it on the full,
identically initialised model on every rank (same seed), before the optimizer is built: each
rank keeps its shard, so T ranks start from exactly the weights one rank would.

Why not DeepSpeed's AutoTP (``"tensor_parallel": {"autotp_size": T}`` handled by DeepSpeed):
measured on DeepSpeed 0.19.8 with 2 CPU ranks over gloo, it refuses the reference models ("Not
able to determine model policy") and GPT-2 ("AutoTP not supported for model", Conv1D); given an
explicit ``partition_config`` it splits the reference blocks' linears, but their attention then
fails on the head count; it trains Llama (through its Hugging Face tp_plan), but replaces the
projection modules, which drops the residual-scale hooks of :mod:`megaraptr.models.hf`, and its
engine swaps the ``mpu`` for its own world-wide groups, which a pipeline's topology cannot
share. One implementation serves the data-parallel path, the pipeline path (3D) and the three
model families alike; megaraptr reads ``autotp_size`` itself and hands DeepSpeed the groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

from torch import nn

from megaraptr.core.block import find_blocks
from megaraptr.errors import ConfigError
from megaraptr.planning.layout import KEY
from megaraptr.planning.tp_costs import ALL_REDUCES_PER_LAYER
from megaraptr.runtime.tp.layers import column_parallel, enter_region, row_parallel


@dataclass(frozen=True)
class Region:
    """One tensor-parallel region of a block: its module and its linears."""

    module: str
    columns: Tuple[Tuple[str, int], ...]
    """(column-parallel linear, fused parts) inside ``module``."""
    row: str
    """The row-parallel linear that closes the region."""


def _split_heads(*names: str) -> Callable[[nn.Module, int], None]:
    """Divide a module's head-count attributes by T (those its forward reads)."""
    def fix(attn: nn.Module, size: int) -> None:
        for name in names:
            if hasattr(attn, name):
                setattr(attn, name, getattr(attn, name) // size)
    return fix


def _attr(*names: str) -> Callable[[nn.Module], Tuple[int, ...]]:
    """The head counts an attention module holds (attribute paths such as "config.x")."""
    def heads(attn: nn.Module) -> Tuple[int, ...]:
        out = []
        for path in names:
            value = attn
            for part in path.split("."):
                value = getattr(value, part)
            out.append(int(value))
        return tuple(out)
    return heads


@dataclass(frozen=True)
class Plan:
    attention: Region
    mlp: Region
    fix_attention: Callable[[nn.Module, int], None]
    heads: Callable[[nn.Module], Tuple[int, ...]]
    """Attention (and key-value) head counts, each must divide by T."""


PLANS: Dict[str, Plan] = {
    "reference": Plan(Region("attn", (("qkv", 3),), "proj"), Region("mlp", (("fc1", 1),), "fc2"),
                      _split_heads("heads"), _attr("heads")),
    "gpt2": Plan(Region("attn", (("c_attn", 3),), "c_proj"),
                 Region("mlp", (("c_fc", 1),), "c_proj"),
                 _split_heads("num_heads", "split_size", "embed_dim"), _attr("num_heads")),
    "llama": Plan(Region("self_attn", (("q_proj", 1), ("k_proj", 1), ("v_proj", 1)), "o_proj"),
                  Region("mlp", (("gate_proj", 1), ("up_proj", 1)), "down_proj"),
                  _split_heads(),  # Llama's attention infers its heads from the shapes
                  _attr("config.num_attention_heads", "config.num_key_value_heads")),
}
"""Per block family: the attention and MLP regions, and what the attention must be told."""

FAMILIES = {"Block": "reference", "PipeBlock": "reference", "GPT2Block": "gpt2",
            "LlamaDecoderLayer": "llama"}
"""Block class name -> plan."""


def plan_of(block: nn.Module) -> Plan:
    name = type(block).__name__
    if name not in FAMILIES:
        raise ConfigError(KEY, f"{name}: megaraptr's tensor parallelism splits "
                          f"{', '.join(sorted(FAMILIES))} blocks (reference BERT/GPT, "
                          "hf:gpt2, hf:llama); allowed for other models: 1")
    return PLANS[FAMILIES[name]]


def _apply_region(block: nn.Module, region: Region, *, rank: int, size: int, group) -> None:
    module = block.get_submodule(region.module)
    for name, parts in region.columns:
        column_parallel(module.get_submodule(name), rank=rank, size=size, parts=parts)
    row_parallel(module.get_submodule(region.row), rank=rank, size=size, group=group)
    enter_region(module, group)


def apply_tensor_parallel(model: nn.Module, *, rank: int, size: int, group,
                          blocks: Sequence[nn.Module] = ()) -> int:
    """Split every block of ``model`` over ``size`` ranks; returns the number of blocks split.

    Args:
        rank: this rank's index in the tensor-parallel group.
        group: the tensor-parallel process group (:class:`megaraptr.runtime.tp.groups.
            ParallelGroups`'s ``tensor_group``).
        blocks: the blocks (default: :func:`megaraptr.core.block.find_blocks`, one pipeline
            stage's included).

    Raises:
        ConfigError: a block family without a plan, or heads / FFN width not divisible.
    """
    blocks = list(blocks) or find_blocks(model, partial=True)
    for block in blocks:
        if getattr(block, "tp_size", 1) != 1:
            raise ValueError(f"block {block.layer_id} is already tensor-parallel")
        plan = plan_of(block)
        heads = plan.heads(block.get_submodule(plan.attention.module))
        if any(h % size for h in heads):
            counts = " and ".join(map(str, heads))
            raise ConfigError(KEY, f"{size}: layer {block.layer_id} has {counts} (key-value) "
                              f"attention heads, not divisible by {size}")
        try:
            _apply_region(block, plan.attention, rank=rank, size=size, group=group)
            _apply_region(block, plan.mlp, rank=rank, size=size, group=group)
        except ValueError as err:
            raise ConfigError(KEY, f"{size}: layer {block.layer_id}: {err}") from None
        plan.fix_attention(block.get_submodule(plan.attention.module), size)
        block.tp_size = size
    return len(blocks)


__all__ = ["ALL_REDUCES_PER_LAYER", "PLANS", "apply_tensor_parallel", "plan_of"]

