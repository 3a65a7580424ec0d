"""The fused residual add checked and timed on a GPU (part of ``megaraptr.bench.gpu``).

On CUDA with Triton: :func:`megaraptr.kernels.residual.triton_scaled_add` against the float64
result (forward and both gradients, float32 and bfloat16, an activation the size of one
BERT-base micro-batch), that :func:`~megaraptr.kernels.residual.residual_add` dispatches to it,
and its time against eager PyTorch's two kernels (``x + s * b``). Elsewhere it reports why it
did not run.

The bfloat16 bound tells one rounding from two: computed in float32 and rounded once to
bfloat16, every element lies within half a bfloat16 spacing of the exact value (plus the
float32 error of the product and the sum); eager PyTorch rounds the product to bfloat16 first,
and a share of its elements falls outside (reported as ``eager_outside``). float32: the product
and the sum in float32, within their two float32 roundings (a GPU may fuse them into one FMA).
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch

from megaraptr.kernels.residual import residual_add, triton_available, triton_scaled_add


def _median_ms(fn: Callable, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[3:])


def _max_error(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> dict:
    """Largest error, and whether every element is within ``bound`` of the reference."""
    err = (out.double() - ref.double()).abs()
    return {"max_abs_error": float(err.max()), "within_bound": bool((err <= bound).all())}


def check(device: str, shape=(64 * 512, 768), scale: float = 4 / 3) -> dict:
    """Check and time the Triton kernel on CUDA; returns a JSON-able dict with ``ok`` (None
    where it could not run)."""

    if device != "cuda" or not torch.cuda.is_available():
        return {"ok": None, "skipped": "no CUDA device (the Triton kernel runs on CUDA)"}
    if not triton_available():
        return {"ok": None, "skipped": "Triton is not importable"}
    return compare(torch.device("cuda"), shape, scale, timed=True)


def _spacing_bf16(v: torch.Tensor) -> torch.Tensor:
    """The distance between neighbouring bfloat16 values around |v| (normal range)."""
    return torch.exp2(torch.floor(torch.log2(v.abs().clamp_min(1e-30))) - 7)


def bounds(x: torch.Tensor, b: torch.Tensor, scale: float) -> tuple:
    """(the float64 result, the error bound of computing it in float32 and rounding once to
    x's dtype)."""
    exact = x.double() + scale * b.double()
    slop = 2.0 ** -24 * (scale * b.double().abs() + exact.abs()) * 1.01  # float32 mul and add
    if x.dtype == torch.bfloat16:
        return exact, 0.5 * _spacing_bf16(exact.abs() + slop) + slop
    return exact, slop


def compare(device: torch.device, shape, scale: float, *, timed: bool) -> dict:
    """The checks of :func:`check` on ``device`` (the dispatch check and the timings need
    CUDA)."""

    result, ok = {"shape": list(shape), "scale": scale}, True
    s = torch.tensor(scale, device=device)
    scale = float(s)  # the float32 value the kernel multiplies by
    gen = torch.Generator(device=device).manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x, b, g = (torch.randn(shape, device=device, generator=gen).to(dtype) for _ in range(3))
        xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
        out = triton_scaled_add(xr, br, s)
        out.backward(g)
        out = out.detach()
        exact, bound = bounds(x, b, scale)
        gexact, gbound = bounds(torch.zeros_like(g), g, scale)
        eager = x + s * b
        entry = {"dtype": str(dtype), "forward": _max_error(out, exact, bound),
                 "eager_outside": float(((eager.double() - exact).abs() > bound).double()
                                        .mean()),
                 "grad_branch": _max_error(br.grad, gexact, gbound),
                 "grad_x_exact": bool(torch.equal(xr.grad, g))}
        ok &= entry["forward"]["within_bound"] and entry["grad_branch"]["within_bound"] and \
            entry["grad_x_exact"]
        if device.type == "cuda":  # residual_add takes the Triton path for CUDA tensors
            entry["dispatch"] = bool(torch.equal(residual_add(x, b, s), out))
            ok &= entry["dispatch"]
        if timed:
            entry["triton_ms"] = _median_ms(lambda: triton_scaled_add(x, b, s))
            entry["eager_ms"] = _median_ms(lambda: x + scale * b)
        result[str(dtype).replace("torch.", "")] = entry
    result["ok"] = bool(ok)
    return result
