"""The kept layer's scaled residual add, ``x + scale * branch``: one fused kernel on GPU.

:func:`residual_add` is what a block calls for each of its two residual branches. The form of
``scale`` picks the arithmetic:

- ``None``: scale 1, ``x + branch`` (one kernel everywhere);
- a Python float: the reference arithmetic of the eager blocks, unchanged (``x + branch`` at
  1, else ``x + scale * branch``: two kernels, the product rounded to the activation dtype);
- a 0-d float32 tensor (the fast paths of :mod:`megaraptr.kernels`): inside a compiled graph
  the PyTorch expression, which inductor fuses into its own kernel, and one graph serves every
  value of the scale (a float would be baked into the graph: one recompile per value); in
  eager mode on CUDA with Triton, :func:`triton_scaled_add`, one pass that computes in float32:
  a bfloat16 result is rounded once (eager rounds the product to bfloat16 first, then the sum),
  a float32 one is the product and the sum each rounded in float32, as eager (unless the GPU
  compiler fuses them into one FMA); backward: ``grad_x = grad``, ``grad_branch = scale *
  grad``, one pass; elsewhere :func:`fallback_scaled_add`.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

Scale = Union[None, float, torch.Tensor]
BLOCK = 1024

try:  # Triton is optional: CUDA builds of torch ship it, CPU builds do not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = tl = None


def triton_available() -> bool:
    """Whether the Triton kernels can be built here (Triton importable)."""
    return triton is not None


def residual_add(x: torch.Tensor, branch: torch.Tensor, scale: Scale) -> torch.Tensor:
    """``x + scale * branch``; see the module docstring for the forms of ``scale``."""
    if scale is None:
        return x + branch
    if not isinstance(scale, torch.Tensor):
        return x + branch if scale == 1.0 else x + scale * branch
    if x.is_cuda and _fusable(x, branch) and not torch.compiler.is_compiling():
        return triton_scaled_add(x, branch, scale)
    return fallback_scaled_add(x, branch, scale)


def fallback_scaled_add(x: torch.Tensor, branch: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """The PyTorch expression of the fused add (what compiled graphs contain)."""
    return x + scale * branch


def _fusable(x: torch.Tensor, branch: torch.Tensor) -> bool:
    return (triton is not None and x.shape == branch.shape and x.dtype == branch.dtype
            and x.is_contiguous() and branch.is_contiguous())


def triton_scaled_add(x: torch.Tensor, branch: torch.Tensor,
                      scale: torch.Tensor) -> torch.Tensor:
    """``x + scale * branch`` by the Triton kernel, differentiable in ``x`` and ``branch``.

    Args:
        x, branch: contiguous tensors of one shape and dtype (on CUDA, or on CPU under
            ``TRITON_INTERPRET=1``).
        scale: a 0-d tensor on the same device (read as float32; not differentiated).
    """
    if triton is None:
        raise RuntimeError("triton_scaled_add needs Triton (pip install triton)")
    return _ScaledAdd.apply(x, branch, scale)


class _ScaledAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, branch, scale):
        scale = scale.detach().to(torch.float32)
        out = torch.empty_like(x)
        n = x.numel()
        _scaled_add_kernel[(triton.cdiv(n, BLOCK),)](x, branch, scale, out, n, BLOCK=BLOCK)
        ctx.save_for_backward(scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        grad = grad.contiguous()
        grad_branch = torch.empty_like(grad)
        n = grad.numel()
        _scale_kernel[(triton.cdiv(n, BLOCK),)](grad, scale, grad_branch, n, BLOCK=BLOCK)
        return grad, grad_branch, None


if triton is not None:
    @triton.jit
    def _scaled_add_kernel(x_ptr, b_ptr, s_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        s = tl.load(s_ptr)
        x = tl.load(x_ptr + offsets, mask=inside).to(tl.float32)
        b = tl.load(b_ptr + offsets, mask=inside).to(tl.float32)
        tl.store(out_ptr + offsets, (x + s * b).to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _scale_kernel(g_ptr, s_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        s = tl.load(s_ptr)
        g = tl.load(g_ptr + offsets, mask=inside).to(tl.float32)
        tl.store(out_ptr + offsets, (s * g).to(out_ptr.dtype.element_ty), mask=inside)


def reference_scaled_add(x: torch.Tensor, branch: torch.Tensor,
                         scale: Optional[float]) -> torch.Tensor:
    """float64 ``x + scale * branch`` rounded once to ``x``'s dtype: what the fused kernel
    should return up to float32 rounding (for tests and the GPU check)."""
    s = 1.0 if scale is None else float(scale)
    return (x.double() + s * branch.double()).to(x.dtype)
