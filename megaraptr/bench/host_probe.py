"""Instruments for the host-overhead benchmark: phase timers and a count of host syncs.

:class:`PhaseClock` times named phases of a training step by wrapping methods (of an
instance, a class or a module) in timers that synchronise the device before and after, and
books each call's *own* time to its phase: a wrapped call inside another wrapped call (the
optimizer inside the ZeRO step) is taken out of the outer phase. What no wrapper covers is
``other``. The wrappers are installed for the breakdown rounds only and removed afterwards,
so the clean step times are taken without them.

:class:`HostSyncCounter` counts, per step, what makes the host wait for the device queue: a
tensor read into Python (``.item()``, ``float(t)``, ``bool(t)``: ``aten._local_scalar_dense``),
ops whose output size depends on data (``nonzero``, ``masked_select``, ``unique``), ``equal``,
copies from an accelerator to the CPU, and explicit synchronize calls (``torch.cuda`` and the
DeepSpeed accelerator's). On a CPU none of these waits for anything, but the same code on a
GPU would; so the counts are what a GPU run would stall on. It also counts every aten op
dispatched (the host work of a step in launches, deterministic where times are noisy).
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                  aten.unique_dim.default, aten.unique_consecutive.default, aten.equal.default}
COPIES = {aten._to_copy.default, aten.copy_.default}


def _device_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class PhaseClock:
    """Self time per phase of the wrapped calls, in seconds, since the last :meth:`take`."""

    def __init__(self, device: torch.device):
        self._sync = _device_sync(device)
        self._stack: List[Tuple[float, float]] = []  # per open call: wall and CPU time spent
        self._installed: List[Tuple[object, str, object, bool]] = []  # in wrapped calls inside
        self.current: Dict[str, float] = {}
        self.current_cpu: Dict[str, float] = {}

    def wrap(self, owner, name: str, phase: str) -> None:
        """Time ``owner.name`` (a method or function attribute) as ``phase`` until
        :meth:`remove`; an attribute that does not exist is left alone."""
        if not hasattr(owner, name):
            return
        had_own = name in getattr(owner, "__dict__", {})
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self._sync()
            start, start_cpu = time.perf_counter(), time.thread_time()
            self._stack.append((0.0, 0.0))
            try:
                return original(*args, **kwargs)
            finally:
                self._sync()
                wall, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
                inner, inner_cpu = self._stack.pop()
                self.current[phase] = self.current.get(phase, 0.0) + wall - inner
                self.current_cpu[phase] = self.current_cpu.get(phase, 0.0) + cpu - inner_cpu
                if self._stack:
                    outer, outer_cpu = self._stack[-1]
                    self._stack[-1] = (outer + wall, outer_cpu + cpu)

        self._installed.append((owner, name, original, had_own))
        setattr(owner, name, timed)

    def remove(self) -> None:
        """Put every wrapped attribute back as it was."""
        for owner, name, original, had_own in reversed(self._installed):
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._installed = []

    def take(self, total_s: float, total_cpu_s: float) -> Tuple[Dict[str, float],
                                                                 Dict[str, float]]:
        """This step's phases in ms, wall and thread CPU time, each with what they leave of
        the step's total as ``other``."""
        out = []
        for phases, total in ((self.current, total_s), (self.current_cpu, total_cpu_s)):
            ms = {name: seconds * 1e3 for name, seconds in phases.items()}
            ms["other"] = total * 1e3 - sum(ms.values())
            out.append(ms)
        self.current, self.current_cpu = {}, {}
        return out[0], out[1]


class HostSyncCounter(TorchDispatchMode):
    """Counts host syncs and dispatched aten ops while active (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self._patched: List[Tuple[object, str, object, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.counts["ops"] += 1
        if func is aten._local_scalar_dense.default:
            self.counts["item"] += 1
        elif func in DATA_DEPENDENT:
            self.counts["data_dependent"] += 1
        elif func in COPIES and isinstance(out, torch.Tensor) and out.device.type == "cpu":
            source = args[1] if func is aten.copy_.default else args[0]
            if isinstance(source, torch.Tensor) and source.device.type != "cpu":
                self.counts["device_to_host"] += 1
        return out

    def _count_calls(self, owner, name: str, key: str = "synchronize", when=None) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        def counted(*args, **kwargs):
            if when is None or when(*args):
                self.counts[key] += 1
            return original(*args, **kwargs)
        self._patched.append((owner, name, original, name in getattr(owner, "__dict__", {})))
        setattr(owner, name, counted)

    def __enter__(self):
        from deepspeed.accelerator import get_accelerator

        self._count_calls(torch.cuda, "synchronize")
        self._count_calls(torch.cuda.Stream, "synchronize")
        self._count_calls(torch.cuda.Event, "synchronize")
        self._count_calls(get_accelerator(), "synchronize")
        self._count_calls(torch.Tensor, "tolist", "tolist",  # a CPU tensor's: not an aten op
                          when=lambda t: t.device.type == "cpu")  # (a GPU one's copy is counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, original, had_own in reversed(self._patched):
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._patched = []
        return super().__exit__(*exc)

    def take(self) -> Dict[str, int]:
        """Counts since the last call: ops, item, data_dependent, device_to_host,
        synchronize, tolist, and ``syncs`` (all but ops)."""
        out = {key: self.counts.get(key, 0) for key in
               ("ops", "item", "data_dependent", "device_to_host", "synchronize", "tolist")}
        out["syncs"] = sum(v for k, v in out.items() if k != "ops")
        self.counts = Counter()
        return out


def count_step(step: Callable[[], None], counter: Optional[HostSyncCounter] = None) -> dict:
    """The counts of one call of ``step`` (a fresh counter unless one is given)."""
    counter = counter or HostSyncCounter()
    with counter:
        step()
    return counter.take()
