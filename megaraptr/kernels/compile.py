"""Per-block compilation: ``torch.compile`` of what an active block computes, never of its skip.

A block takes part through two attributes (the reference ``megaraptr.models.Block`` has both):
``layer(x, attn_mask, scale)``, the computation of an active block (what activation
checkpointing recomputes), and ``fast``, None or the :class:`FastLayer` installed here. The
block's ``forward`` keeps the RAPTR contract in eager Python: the ``skippable`` early return of
a skipped block and the choice of its scale happen before the compiled region is entered, so a
skipped layer costs no kernel and a new subset never triggers a recompile.

Recompiles: the compiled function is the block class's ``layer`` (one code object), compiled
once per process and backend and shared by every block of every model: all blocks of one shape
reuse one graph (parameters are graph inputs, not constants). The residual scale enters as
None (scale 1) or a 0-d float32 tensor, so a training run has at most two graphs per block
shape and precision (unscaled and scaled), whatever the subsets and scale values; eval mode and
no-grad calls add their own. ``dynamic=False``: a new batch shape compiles a static graph of
its own instead of turning the training graph dynamic.

The backend is inductor unless ``$MEGARAPTR_COMPILE_BACKEND`` names another (tests on CPU use
``aot_eager``: same tracing, no code generation).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Dict, Optional, Tuple

import torch

BACKEND_ENV = "MEGARAPTR_COMPILE_BACKEND"
_COMPILED: Dict[Tuple, Callable] = {}


def compile_backend() -> str:
    """The torch.compile backend of the compiled path: ``$MEGARAPTR_COMPILE_BACKEND`` or
    "inductor"."""
    return os.environ.get(BACKEND_ENV) or "inductor"


class FastLayer:
    """What an active block runs on a fast path: its layer function and its scale as a tensor.

    Args:
        layer: called as ``layer(x, attn_mask, scale)``.
        compiled: whether ``layer`` is a compiled function (for reports).
    """

    def __init__(self, layer: Callable, *, compiled: bool):
        self.layer = layer
        self.compiled = compiled
        self._cached: Optional[Tuple[float, torch.Tensor]] = None

    def scale(self, value: float, like: torch.Tensor) -> Optional[torch.Tensor]:
        """The residual scale for ``layer``: None at 1, else a 0-d float32 tensor on
        ``like``'s device (made anew only when the value changes: no sync, no recompile)."""
        if value == 1.0:
            return None
        cached = self._cached
        if cached is None or cached[0] != value or cached[1].device != like.device:
            cached = (value, torch.full((), value, dtype=torch.float32, device=like.device))
            self._cached = cached
        return cached[1]


def compiled_function(fn: Callable, backend=None) -> Callable:
    """``torch.compile(fn, dynamic=False)``, once per process for each (fn, backend)."""
    backend = backend or compile_backend()
    key = (fn, backend if isinstance(backend, str) else id(backend))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, backend=backend, dynamic=False)
    return _COMPILED[key]


def compile_block(block: torch.nn.Module, backend=None) -> FastLayer:
    """Install the compiled path on one block (``block.fast``); returns it.

    Args:
        block: a module with a ``layer`` method and a ``fast`` attribute.
        backend: a torch.compile backend (name or callable); default :func:`compile_backend`.
    """
    layer = compiled_function(type(block).layer, backend)
    block.fast = FastLayer(functools.partial(layer, block), compiled=True)
    return block.fast


def fuse_block(block: torch.nn.Module) -> FastLayer:
    """Install the uncompiled fast path on one block: eager kernels with the tensor scale, so
    the scaled residual add runs as one Triton kernel on CUDA."""
    block.fast = FastLayer(block.layer, compiled=False)
    return block.fast


def supports_fast_path(block: torch.nn.Module) -> bool:
    """Whether a block follows the contract above (has ``layer`` and ``fast``)."""
    return callable(getattr(block, "layer", None)) and hasattr(block, "fast")


def dynamo_counts() -> dict:
    """Process-wide torch.compile counters: graphs compiled, graph breaks, recompiles seen."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "frames_ok": int(counters["frames"].get("ok", 0))}


def reset() -> None:
    """Forget every compiled function and torch.compile's caches (tests; a fresh start)."""
    _COMPILED.clear()
    torch._dynamo.reset()
