"""ZeRO-3 prefetch for a subnetwork that changes every step.

DeepSpeed's ZeRO-3 parameter coordinator records the order in which modules run during one
forward+backward (the *trace*) and, once the trace is complete, all-gathers the parameters of
the next modules ahead of time. A new random subset of layers runs modules in another order, so
plain DeepSpeed finds a mismatch at the first skipped or revived layer, throws the trace away
(no prefetch for that step), records a new one on the next step, and meanwhile prefetches the
parameters of layers that the stale trace expected but this step skips (wasted all-gathers).

megaraptr tells the coordinator the step's module order instead. A training trace is a fixed
*skeleton* (every module outside the transformer blocks, and each block itself, which runs its
hooks even when skipped) in which each block appears twice, once in forward and once in
backward, each time followed by the contiguous *run* of its own submodules when it is active:

    [..., block0, block0.ln1, block0.attn, ..., block1, block2, block2.ln1, ..., <backward> ...,
     block2, block2.mlp, ..., block1, block0, block0.mlp, ...]

:class:`SubnetworkTrace` learns the skeleton and each block's forward and backward runs from
traces DeepSpeed records (a block's runs are learnt the first time it is active), then before
every step installs the trace of that step's mask: the skeleton with the runs of the active
blocks only, marked complete. The coordinator then prefetches exactly the parameters the step
will use, in order, and never gathers a skipped layer's. Until every active block's runs are
known, the step is left to DeepSpeed to record (no prefetch, no wasted gathers).

This uses the coordinator's private (name-mangled) fields, as of DeepSpeed 0.19.8: the engine
builds a :class:`SubnetworkTrace` only when the coordinator's source is that release's
(patch ``zero3_prefetch`` in :mod:`megaraptr.runtime.compat`); otherwise DeepSpeed keeps
recording its own trace.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

# The coordinator's `self.__x` fields as Python stores them (name-mangled)
ORDER = "_PartitionedParameterCoordinator__submodule_order"
PARAM_ORDER = "_PartitionedParameterCoordinator__param_order"
MODE = "_PartitionedParameterCoordinator__trace_mode"
PARAM_IN_TRACE = "_PartitionedParameterCoordinator__ParamInTrace"


class SubnetworkTrace:
    """Install each step's ZeRO-3 module trace, derived from the step's mask.

    Args:
        ds_engine: a DeepSpeed engine under ZeRO stage 3.
        blocks: the model's marked blocks, in layer order.
    """

    def __init__(self, ds_engine, blocks: Sequence[nn.Module]):
        from deepspeed.runtime.zero import partitioned_param_coordinator as ppc

        self._ppc = ppc
        self.coordinator = ds_engine.optimizer._get_param_coordinator()
        self.blocks = list(blocks)
        self.layer_of = {block: block.layer_id for block in self.blocks}
        self.owner: Dict[nn.Module, int] = {}
        for block in self.blocks:
            for module in block.modules():
                if module is not block:
                    self.owner[module] = block.layer_id
        self.skeleton: Optional[Tuple[nn.Module, ...]] = None
        self.runs: Dict[int, Tuple[tuple, tuple]] = {}
        self._installed_order: Optional[tuple] = None

    # -- learning --------------------------------------------------------------------------
    def _parse(self, order: Sequence[nn.Module]):
        """Split a recorded trace into skeleton and per-block runs; None if it is not one
        training pass (an eval forward, or a trace cut short)."""
        skeleton: List[nn.Module] = []
        runs: Dict[int, List[list]] = {}
        current: Optional[list] = None
        current_layer = None
        for module in order:
            layer = self.owner.get(module)
            if layer is None:
                skeleton.append(module)
                current = None
                if module in self.layer_of:
                    current_layer = self.layer_of[module]
                    current = []
                    runs.setdefault(current_layer, []).append(current)
            elif current is None or layer != current_layer:
                return None  # a submodule outside its block's run
            else:
                current.append(module)
        if sorted(runs) != list(range(len(self.blocks))) or \
                any(len(r) != 2 for r in runs.values()):
            return None
        return tuple(skeleton), {k: (tuple(a), tuple(b)) for k, (a, b) in runs.items()}

    def learn(self) -> None:
        """Read the coordinator's last recorded trace, if it is a training pass."""
        order = getattr(self.coordinator, ORDER)
        if not order or self.coordinator.is_invalid_trace() or order is self._installed_order:
            return  # nothing recorded, or the trace megaraptr installed: nothing new
        parsed = self._parse(order)
        if parsed is None:
            return
        skeleton, runs = parsed
        if self.skeleton is not None and skeleton != self.skeleton:
            self.runs.clear()  # the model's outer order changed: start over
        self.skeleton = skeleton
        for layer, (forward, backward) in runs.items():
            if forward:  # empty when the block was skipped
                self.runs[layer] = (forward, backward)

    # -- installing ------------------------------------------------------------------------
    def order_for(self, active: Sequence[bool]) -> Optional[Tuple[nn.Module, ...]]:
        """The module trace of a step with these active layers, or None if not yet known."""
        if self.skeleton is None or any(on and i not in self.runs for i, on in enumerate(active)):
            return None
        seen: Dict[int, int] = {}
        order: List[nn.Module] = []
        for module in self.skeleton:
            order.append(module)
            layer = self.layer_of.get(module)
            if layer is not None:
                occurrence = seen.get(layer, 0)
                seen[layer] = occurrence + 1
                if active[layer]:
                    order.extend(self.runs[layer][occurrence])
        return tuple(order)

    def _install(self, order: Tuple[nn.Module, ...]) -> None:
        co, ppc = self.coordinator, self._ppc
        param_in_trace = getattr(type(co), PARAM_IN_TRACE)
        params = []
        for step_id, module in enumerate(order):
            leaf = ppc.z3_leaf_module(module)
            for param in sorted(set(ppc.iter_params(module, recurse=leaf)), key=lambda p: p.ds_id):
                params.append(param_in_trace(param=param, step_id_last_used_at=step_id))
        setattr(co, ORDER, order)
        self._installed_order = order
        setattr(co, PARAM_ORDER, tuple(params))
        setattr(co, MODE, ppc.ZeRoTraceMode.COMPLETE)

    def _record_next(self) -> None:
        co = self.coordinator
        co._clear_trace_structures()
        setattr(co, MODE, self._ppc.ZeRoTraceMode.RECORD)

    def prepare(self, active: Sequence[bool]) -> bool:
        """Before a step's first forward: install its trace (True), or have DeepSpeed record
        the step so the missing runs are learnt (False)."""
        self.learn()
        active = tuple(active)
        order = self.order_for(active)
        if order is None:
            self._record_next()
            return False
        current = getattr(self.coordinator, ORDER)
        if not (self.coordinator.is_complete_trace() and current == order):
            self._install(order)
        return True
