"""The vocabulary of megaraptr's DeepSpeed registry: the supported release, the names of the
DeepSpeed classes and modules it points into, and :class:`Patch` (one place where megaraptr
relies on DeepSpeed internals). The patches themselves are in :mod:`.registry` and
:mod:`.checkpoint_patches`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

SUPPORTED = "0.19.8"
"""The DeepSpeed release whose sources the registry's hashes were recorded from."""

Z12M = "deepspeed.runtime.zero.stage_1_and_2"
Z12 = Z12M + ":DeepSpeedZeroOptimizer"
Z3 = "deepspeed.runtime.zero.stage3:DeepSpeedZeroOptimizer_Stage3"
PPCM = "deepspeed.runtime.zero.partitioned_param_coordinator"
PPC = PPCM + ":PartitionedParameterCoordinator"
BF16 = "deepspeed.runtime.bf16_optimizer:BF16_Optimizer"
LINK = "deepspeed.utils.mixed_precision_linkage"
PIPE = "deepspeed.runtime.pipe.module:PipelineModule"
GRID = "deepspeed.runtime.pipe.topology:PipelineParallelGrid"
ENGINE = "deepspeed.runtime.engine:DeepSpeedEngine"
COMM = "deepspeed.comm.torch"
TCE = "deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine:TorchCheckpointEngine"
CE = "deepspeed.runtime.checkpoint_engine.checkpoint_engine:CheckpointEngine"
UTILS = "deepspeed.runtime.utils"
MANGLED = "_PartitionedParameterCoordinator__"
"""The prefix Python gives the coordinator's ``self.__x`` fields."""


@dataclass(frozen=True)
class Patch:
    """One place where megaraptr relies on DeepSpeed internals."""

    where: str
    """The megaraptr module(s) that do it."""
    what: str
    """What megaraptr does there, and why."""
    sources: Tuple[str, ...]
    """The DeepSpeed definitions (keys of ``SOURCES``) whose behaviour it assumes."""
    names: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    """Owner (``module`` or ``module:Class``) -> the private names megaraptr touches."""
    fallback: Optional[str] = None
    """What runs when a source differs; None: no correct fallback, megaraptr stops."""
    no_fallback: str = ""
    """Why there is no fallback (when ``fallback`` is None)."""
