"""Which kernels run: the ``"kernels"`` setting resolved for one device, ZeRO stage and model.

Modes (the raptr block's ``"kernels"``, or ``--kernels``):

- ``"eager"``: everything as written (the default; the reference arithmetic).
- ``"fused"``: eager blocks with fused pieces: the scaled residual add as one Triton kernel
  (CUDA), NVIDIA apex's FusedLayerNorm when apex is importable (CUDA), and a fused AdamW
  (:mod:`megaraptr.kernels.optim`).
- ``"compiled"``: ``"fused"``, and each block's active computation compiled once
  (:mod:`megaraptr.kernels.compile`; inductor fuses the residual add and the layer norms itself).
- ``"auto"``: the fastest available path: ``"compiled"`` on CUDA with Triton, except under
  ZeRO-3 (``"fused"``); ``"fused"`` on CPU; ``"eager"`` on other devices.

Why auto never compiles on CPU: there inductor was slower per layer than eager kernels (46.9
against 41.4 ms per layer, mini size, one thread) and compiling takes seconds, while the fused
AdamW step was 3.7x faster than the default one. Why not under ZeRO-3: DeepSpeed gathers each
submodule's parameters in hooks that torch.compile may not trace, so a block falls apart into
a graph per submodule (15 graphs for 4 layers measured on CPU), which is refused as
``"compiled"`` with a one-line error. Under tensor parallelism (T > 1) each block's attention
and MLP hold collectives in autograd functions that megaraptr has not compiled: ``"compiled"``
is refused, ``"auto"`` picks ``"fused"`` there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from megaraptr.errors import ConfigError
from megaraptr.kernels.compile import compile_backend
from megaraptr.kernels.layernorm import apex_layer_norm
from megaraptr.kernels.residual import triton_available as available

MODES = ("eager", "fused", "compiled", "auto")
KEY = "raptr.kernels"


@dataclass(frozen=True)
class KernelPlan:
    """The resolved kernels of one model on one device."""

    mode: str
    """"eager", "fused" or "compiled" ("auto" resolved)."""
    requested: str
    """The setting as given."""
    device: str
    """Device type: "cuda", "cpu", ..."""
    reason: str
    """Why this mode, in a few words."""
    triton: bool = False
    """The scaled residual add runs as a Triton kernel (hand-written, or inductor's)."""
    apex_layer_norm: bool = False
    """Layer norms outside compiled regions use apex's FusedLayerNorm kernel."""
    compile_backend: Optional[str] = None
    """The torch.compile backend of the compiled blocks."""

    def describe(self) -> str:
        return f"{self.mode} ({self.reason})"

    def to_dict(self) -> dict:
        return asdict(self)


def check_mode(value: str, key: str = KEY) -> str:
    """``value`` if it is a kernels mode; else a one-line ConfigError."""
    if value not in MODES:
        raise ConfigError(key, f"{value!r} is not a kernels mode; allowed: {', '.join(MODES)}")
    return value


def triton_available() -> bool:

    return available()


def apex_available() -> bool:

    return apex_layer_norm() is not None


def resolve_kernels(requested: str, *, device: str, zero_stage: int = 0,
                    key: str = KEY, tensor_parallel: int = 1) -> KernelPlan:
    """Resolve a kernels setting.

    Args:
        requested: one of :data:`MODES`.
        device: the device type the model trains on ("cuda", "cpu", ...).
        zero_stage: the DeepSpeed ZeRO stage (0 without DeepSpeed).
        key: the setting's name in error messages.
        tensor_parallel: the tensor-parallel size T (1: none).

    Raises:
        ConfigError: an unknown mode, or "compiled" where it cannot run (ZeRO-3; CUDA without
            Triton).
    """

    check_mode(requested, key)
    cuda = device == "cuda"
    mode, reason = requested, "as requested"
    if requested == "auto":
        if cuda and tensor_parallel > 1:
            mode, reason = "fused", "auto: tensor parallelism (blocks hold collectives)"
        elif cuda and zero_stage == 3:
            mode, reason = "fused", "auto: ZeRO-3 gathers parameters inside each block"
        elif cuda and not triton_available():
            mode, reason = "fused", "auto: no Triton for torch.compile"
        elif cuda:
            mode, reason = "compiled", "auto: CUDA with Triton"
        elif device == "cpu":
            mode, reason = "fused", "auto: CPU, where inductor is not faster per layer"
        else:
            mode, reason = "eager", f"auto: no fused kernels known for {device}"
    if mode == "compiled" and zero_stage == 3:
        raise ConfigError(key, '"compiled" does not run under ZeRO-3 (DeepSpeed gathers '
                          "parameters in hooks that break each block into many graphs); "
                          'allowed there: "fused", "eager" or "auto"')
    if mode == "compiled" and tensor_parallel > 1:
        raise ConfigError(key, f'"compiled" does not run with tensor parallel {tensor_parallel} '
                          "(the blocks' collectives are not compiled); allowed there: "
                          '"fused", "eager" or "auto"')
    if mode == "compiled" and cuda and compile_backend() == "inductor" and \
            not triton_available():
        raise ConfigError(key, '"compiled" needs Triton on CUDA (torch.compile\'s inductor); '
                          'allowed here: "fused", "eager" or "auto"')
    if mode == "eager":
        return KernelPlan(mode, requested, device, reason)
    return KernelPlan(mode, requested, device, reason,
                      triton=cuda and (mode == "compiled" or triton_available()),
                      apex_layer_norm=cuda and apex_available(),
                      compile_backend=compile_backend() if mode == "compiled" else None)
