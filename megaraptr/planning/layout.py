"""The TP x PP x DP layout of a run: which rank holds which shard of which pipeline stage.

A run with tensor parallelism T (the ds_config's ``"tensor_parallel": {"autotp_size": T}``),
P pipeline stages (``--pipeline-stages``) and W ranks has D = W / (T P) data-parallel replicas.
Ranks are numbered as DeepSpeed's ``PipeModelDataParallelTopology`` numbers them, tensor
parallelism innermost (the T ranks of a layer's shards are consecutive: one node's GPUs)::

    rank = pipe * (D * T) + data * T + tensor

Everything here is pure arithmetic and one-line :class:`ConfigError` checks, run before any
process group or model exists (``megaraptr-config validate``, training's preflight).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from megaraptr.errors import ConfigError

KEY = "tensor_parallel.autotp_size"


@dataclass(frozen=True)
class Layout:
    """Tensor x pipeline x data parallel sizes of one run."""

    tensor: int = 1
    pipeline: int = 1
    data: int = 1

    @property
    def world(self) -> int:
        return self.tensor * self.pipeline * self.data

    def coords(self, rank: int) -> Tuple[int, int, int]:
        """(pipeline stage, data-parallel index, tensor-parallel index) of ``rank``."""
        pipe, rest = divmod(rank, self.data * self.tensor)
        data, tensor = divmod(rest, self.tensor)
        return pipe, data, tensor

    def rank(self, pipe: int, data: int, tensor: int) -> int:
        return (pipe * self.data + data) * self.tensor + tensor

    def tensor_groups(self) -> List[List[int]]:
        """The ranks of each tensor-parallel group (one layer's T shards)."""
        return [[self.rank(p, d, t) for t in range(self.tensor)]
                for p in range(self.pipeline) for d in range(self.data)]

    def data_groups(self) -> List[List[int]]:
        """The ranks of each data-parallel group (replicas of one shard of one stage)."""
        return [[self.rank(p, d, t) for d in range(self.data)]
                for p in range(self.pipeline) for t in range(self.tensor)]

    def describe(self) -> str:
        return (f"TP {self.tensor} x PP {self.pipeline} x DP {self.data} = {self.world} "
                f"rank{'s' if self.world != 1 else ''}")


def tensor_parallel_size(ds_config: dict) -> int:
    """T from the ds_config's ``"tensor_parallel": {"autotp_size": T}`` (absent, 0 or 1: 1).

    Raises:
        ConfigError: a value that is not a whole number of at least 0.
    """
    block = ds_config.get("tensor_parallel")
    if block is None:
        return 1
    if not isinstance(block, dict):
        raise ConfigError("tensor_parallel", f"{block!r}; allowed: an object such as "
                          '{"autotp_size": 8}')
    size = block.get("autotp_size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(KEY, f"{size!r}; allowed: a whole number, 1 or more (0: off)")
    return max(size, 1)


def check_layout(*, world: int, tensor: int, pipeline: int = 1) -> Layout:
    """The layout of ``world`` ranks under T and P; one line when they do not divide it."""
    pipeline = max(pipeline, 1)
    if world < 1 or world % (tensor * pipeline):
        raise ConfigError(KEY, f"world size {world} is not divisible by tensor parallel {tensor}"
                          f" x pipeline stages {pipeline} = {tensor * pipeline}; allowed: a "
                          "world size that is a multiple of T x P")
    return Layout(tensor, pipeline, world // (tensor * pipeline))


def check_shape(*, tensor: int, heads: int, ffn: int, kv_heads: Optional[int] = None,
                model: str = "model") -> None:
    """Attention heads (and key-value heads) and the FFN width must split evenly over T."""
    for what, value in (("attention heads", heads), ("key-value heads", kv_heads),
                        ("FFN width", ffn)):
        if value is not None and value % tensor:
            raise ConfigError(KEY, f"{tensor}: {model} has {value} {what}, not divisible by "
                              f"{tensor}; allowed: a divisor of {value}")


def check_tensor_parallel(ds_config: dict, *, tensor: int, pipeline: bool = False) -> None:
    """What tensor parallelism refuses in a ds_config: ZeRO-3, fp16, partitioned pipes."""
    if tensor == 1:
        return
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    if stage == 3:
        raise ConfigError("zero_optimization.stage", f"3 with {KEY} {tensor}; allowed: 0, 1 "
                          "or 2 (megaraptr's tensor parallelism shards no ZeRO-3 parameters)")
    if (ds_config.get("fp16") or {}).get("enabled"):
        raise ConfigError("fp16.enabled", f"fp16 with {KEY} {tensor} is not supported; "
                          "allowed: bf16 or fp32")
    block = ds_config.get("tensor_parallel") or {}
    extra = sorted(set(block) - {"autotp_size"})
    if extra:
        raise ConfigError("tensor_parallel", f"{', '.join(extra)}: DeepSpeed AutoTP options "
                          "megaraptr's tensor parallelism does not use; allowed: autotp_size")
    pipe = ds_config.get("pipeline") or {}
    for key in ("pipe_partitioned", "grad_partitioned"):
        if pipeline and pipe.get(key):
            raise ConfigError(f"pipeline.{key}", f"true with {KEY} {tensor} is not supported; "
                              "allowed: false (every tensor-parallel rank sends the whole "
                              "activation)")
