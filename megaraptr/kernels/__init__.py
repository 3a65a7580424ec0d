"""Fused and compiled kernels for active layers, with plain-PyTorch fallbacks.

The raptr block's ``"kernels"`` (or ``--kernels``) picks a mode; ``megaraptr.initialize``
resolves it for the device and ZeRO stage (:func:`resolve_kernels`), installs it on the model
(:func:`apply_kernels`) and on the optimizer (:func:`fused_optimizer`) before DeepSpeed builds
anything. Modules, one concept each:

- ``select``: the modes and what ``"auto"`` picks (:class:`KernelPlan`);
- ``compile``: per-block compilation of the active computation, no recompiles across subsets;
- ``residual``: the kept layer's scaled residual add (Triton kernel, PyTorch fallback);
- ``layernorm``: apex's FusedLayerNorm where apex is importable;
- ``optim``: a fused AdamW that keeps frozen (skipped) layers free.

A skipped layer costs nothing on every path: the skip test stays in eager Python, in front of
the compiled or fused computation.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from megaraptr.kernels.compile import compile_block, dynamo_counts, fuse_block, supports_fast_path
from megaraptr.kernels.layernorm import swap_layer_norms
from megaraptr.kernels.optim import fused_optimizer
from megaraptr.kernels.select import MODES, KernelPlan, check_mode, resolve_kernels


def apply_kernels(model: nn.Module, blocks: Sequence[nn.Module], plan: KernelPlan) -> dict:
    """Install ``plan`` on ``model``'s blocks (and its layer norms); returns what changed.

    Blocks that do not follow the fast-path contract (:func:`supports_fast_path`) stay eager.
    Call before ``deepspeed.initialize``: compilation itself happens at the first call.

    Returns:
        ``{"compiled_blocks": n, "fused_blocks": n, "eager_blocks": n, "apex_layer_norms": n}``.
    """
    done = {"compiled_blocks": 0, "fused_blocks": 0, "eager_blocks": 0, "apex_layer_norms": 0}
    if plan.mode == "eager":
        done["eager_blocks"] = len(blocks)
        return done
    compiled = []
    for block in blocks:
        if not supports_fast_path(block):
            done["eager_blocks"] += 1
        elif plan.mode == "compiled":
            compile_block(block, plan.compile_backend)
            compiled.append(block)
            done["compiled_blocks"] += 1
        else:
            fuse_block(block)
            done["fused_blocks"] += 1
    if plan.apex_layer_norm:
        done["apex_layer_norms"] = swap_layer_norms(model, skip=compiled)
    return done


__all__ = ["MODES", "KernelPlan", "apply_kernels", "check_mode", "compile_block",
           "dynamo_counts", "fuse_block", "fused_optimizer", "resolve_kernels",
           "supports_fast_path", "swap_layer_norms"]
