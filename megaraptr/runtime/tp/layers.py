"""Megatron-style column- and row-parallel linear layers, made in place from existing modules.

A transformer sub-block (attention, MLP) becomes one tensor-parallel region (Megatron-LM's
``tensor_parallel/layers.py`` and ``mappings.py``, reduced to what a block needs)::

    x --copy--> column-parallel linears (output features split) --> local heads / activation
      --> row-parallel linear (input features split) --reduce--> + bias

- :func:`enter_region` (on the region's module): forward identity, backward all-reduce of the
  input gradient over the tensor-parallel group, once for all column-parallel linears of the
  region (Llama's q, k and v share it);
- :func:`column_parallel`: keeps this rank's rows of the weight (and bias); fused outputs
  (a ``[q; k; v]`` projection) are split part by part so each rank keeps whole heads;
- :func:`row_parallel`: keeps this rank's columns of the weight; its forward adds the ranks'
  partial products with one all-reduce, then the (replicated) bias.

So an active layer runs two all-reduces forward and two backward per micro-batch, and a skipped
layer runs none: its block returns before any of these modules is called. Modules keep their
identity, names and hooks (the forward of a row-parallel module is replaced on the instance, as
:mod:`megaraptr.models.hf` does for layers), and parameters keep their identity (new, sharded
data in the same ``Parameter``), so parameter groups built from the full model stay valid.
``nn.Linear`` (weight ``[out, in]``) and transformers' ``Conv1D`` (GPT-2, ``[in, out]``) are
handled.
Sharded parameters carry ``tensor_model_parallel = True`` and ``partition_dim``, which DeepSpeed
reads to count them on every rank in the clipping norm (replicated ones on tensor rank 0 only).
"""
from __future__ import annotations

import types

import torch
import torch.distributed as dist
from torch import nn


class _CopyToRegion(torch.autograd.Function):
    """Identity forward; the input gradient summed over the group backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromRegion(torch.autograd.Function):
    """The partial outputs summed over the group forward; identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.contiguous()
        if out is x:
            ctx.mark_dirty(x)  # summed in place: the matmul's backward does not read it
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_region(x: torch.Tensor, group) -> torch.Tensor:
    return _CopyToRegion.apply(x, group)


def reduce_from_region(x: torch.Tensor, group) -> torch.Tensor:
    return _ReduceFromRegion.apply(x, group)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers' GPT-2


def _out_dim(module: nn.Module) -> int:
    return 1 if _is_conv1d(module) else 0


def _shard(tensor: torch.Tensor, dim: int, parts: int, rank: int, size: int) -> torch.Tensor:
    """This rank's slice of each of ``parts`` equal blocks of ``tensor`` along ``dim``."""
    blocks = tensor.chunk(parts, dim=dim)
    if any(b.shape[dim] % size for b in blocks):
        raise ValueError(f"dimension {dim} of {tuple(tensor.shape)} in {parts} part(s) does not "
                         f"split over {size} tensor-parallel ranks")
    return torch.cat([b.chunk(size, dim=dim)[rank] for b in blocks], dim=dim).contiguous()


def _set(module: nn.Module, name: str, value: torch.Tensor, partition_dim) -> None:
    """Give parameter ``name`` its shard in place: the same Parameter object (parameter groups
    or an optimizer built from the full model still hold it), new data."""
    param = getattr(module, name)
    param.data = value.detach().clone()
    if partition_dim is not None:
        param.tensor_model_parallel = True
        param.partition_dim = partition_dim


@torch.no_grad()
def column_parallel(module: nn.Module, *, rank: int, size: int, parts: int = 1) -> None:
    """Keep this rank's output features of ``module`` (``parts``: fused outputs, e.g. 3 for
    ``[q; k; v]``, each split separately)."""
    dim = _out_dim(module)
    _set(module, "weight", _shard(module.weight, dim, parts, rank, size), dim)
    if module.bias is not None:
        _set(module, "bias", _shard(module.bias, 0, parts, rank, size), 0)
    if _is_conv1d(module):
        module.nf = module.weight.shape[1]
    else:
        module.out_features = module.weight.shape[0]
    module.tp_kind = "column"


def _row_linear(self, x: torch.Tensor) -> torch.Tensor:
    out = reduce_from_region(torch.nn.functional.linear(x, self.weight), self.tp_group)
    return out if self.bias is None else out + self.bias


def _row_conv1d(self, x: torch.Tensor) -> torch.Tensor:
    out = torch.matmul(x, self.weight)  # [..., in / T] @ [in / T, nf]
    out = reduce_from_region(out, self.tp_group)
    return out if self.bias is None else out + self.bias


@torch.no_grad()
def row_parallel(module: nn.Module, *, rank: int, size: int, group) -> None:
    """Keep this rank's input features of ``module``; its output becomes the sum over ranks."""
    conv = _is_conv1d(module)
    dim = 0 if conv else 1
    _set(module, "weight", _shard(module.weight, dim, 1, rank, size), dim)
    # the bias stays whole and replicated: added once, after the sum
    if not conv:
        module.in_features = module.weight.shape[1]
    module.tp_group = group
    module.tp_kind = "row"
    module.forward = types.MethodType(_row_conv1d if conv else _row_linear, module)


def _enter_hook(module: nn.Module, args, kwargs):
    if args:
        return (copy_to_region(args[0], module.tp_group),) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs, hidden_states=copy_to_region(kwargs["hidden_states"],
                                                       module.tp_group))
    return args, kwargs


def enter_region(module: nn.Module, group) -> None:
    """Make ``module``'s input (first argument or ``hidden_states``) enter the region."""
    module.tp_group = group
    module.register_forward_pre_hook(_enter_hook, with_kwargs=True)
