"""The plain-PyTorch step-time loop: the ideal a DeepSpeed path is measured against.

:func:`run_plain` trains a reference model with a torch AdamW and no DeepSpeed, one fresh
random subset of exactly k layers per step, and times each step (skipped layers get no
gradient and no optimizer work); :func:`summarize` turns the samples into medians, speedups
and the line fit t(k) = fixed + per_layer * k. The step plan (:class:`Plan`) is one ordinary
raptr schedule: one untimed full-model step, then one stage per k, ascending (exact sampling,
no fixed layers), so the DeepSpeed loop of the step-time benchmark
(:mod:`megaraptr.bench.timing`) follows the same subsets on the same batches. The config tool's
``--profile`` (:func:`megaraptr.planning.step_costs.profile`) uses the same loop.
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from megaraptr.core.block import find_blocks, set_layer_mask
from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.kernels import apply_kernels, dynamo_counts, resolve_kernels
from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.models import build_model, optimizer_groups

LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.98), 1e-6, 0.01


@dataclass
class Plan:
    """What one benchmark run measures; the same for every path."""

    model: str
    size: str
    num_layers: int
    ks: List[int]
    steps: int
    warmup: int
    micro_batch: int
    seq_len: int
    precision: str
    device: str
    skipped_layers: str = "freeze"
    seed: int = 1234
    kernels: str = "eager"
    """The "kernels" mode both paths run (megaraptr.kernels)."""
    breakdown: bool = False
    extra_ds_config: dict = field(default_factory=dict)

    @property
    def stage_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def run_steps(self) -> int:
        """Steps the loops run: the full-model step, then one stage per k."""
        return 1 + len(self.ks) * self.stage_steps

    @property
    def total_steps(self) -> int:
        """The schedule's length: one more full-model step when the last k is below L."""
        return self.run_steps + (0 if self.ks[-1] == self.num_layers else 1)

    def phase(self, step: int) -> tuple[Optional[int], bool]:
        """(k, timed) of a step; k is None for the untimed full-model first step."""
        if step == 1:
            return None, False
        index, offset = divmod(step - 2, self.stage_steps)
        return self.ks[index], offset >= self.warmup


def raptr_block(plan: Plan) -> dict:
    """The raptr block both paths follow: ascending exact-k stages after one full step."""
    stages = [{"layers": k, "steps": plan.stage_steps} for k in plan.ks]
    if plan.ks[-1] == plan.num_layers:
        del stages[-1]["steps"]  # the last stage runs to the end
    else:
        stages.append({"layers": plan.num_layers})
    return {"enabled": True, "sampling": "exact", "fixed_layers": [], "schedule": stages,
            "full_model_warmup_steps": 1, "skipped_layers": plan.skipped_layers,
            "seed": plan.seed, "consistency_check_interval": 0, "kernels": plan.kernels}


def build_plan_model(plan: Plan, vocab_size: int):

    torch.manual_seed(plan.seed)
    return build_model(plan.model, plan.size, vocab_size=vocab_size, seq_len=plan.seq_len)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Phases:
    """Optional per-phase timers (synchronizing at each boundary; only with --breakdown)."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device, self.enabled, self.current = device, enabled, {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            _sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start
            return out

        return timed if self.enabled else fn

    def take(self, total: float) -> Dict[str, float]:
        """This step's phases in ms, with what they leave of ``total`` as "other"."""
        out = {k: v * 1e3 for k, v in self.current.items()}
        if out:
            out["other"] = total * 1e3 - sum(out.values())
        self.current = {}
        return out


def loop(plan: Plan, batches, device: torch.device, step_fn: Callable, phases: Phases) -> dict:
    """Run the plan; per k: timed step samples (ms) and, with breakdown, phase samples; the
    torch.compile graphs made during the run and during its timed steps."""

    samples = {k: [] for k in plan.ks}
    phase_samples: Dict[int, List[dict]] = {k: [] for k in plan.ks}
    graphs = {"start": dynamo_counts()["unique_graphs"], "timed": 0}
    for step in range(1, plan.run_steps + 1):
        k, timed = plan.phase(step)
        before = dynamo_counts()["unique_graphs"]
        batch = {name: t.to(device) for name, t in batches.step_batches(step)[0].items()}
        _sync(device)
        start = time.perf_counter()
        active = step_fn(step, batch)
        _sync(device)
        elapsed = time.perf_counter() - start
        split = phases.take(elapsed)
        expected = plan.num_layers if k is None else k
        if active != expected:
            raise RuntimeError(f"step {step} ran {active} layers, the plan says {expected}")
        if timed:
            samples[k].append(elapsed * 1e3)
            phase_samples[k].append(split)
            graphs["timed"] += dynamo_counts()["unique_graphs"] - before
    return {"samples_ms": samples, "phases_ms": phase_samples if plan.breakdown else None,
            "compiled_graphs": dynamo_counts()["unique_graphs"] - graphs["start"],
            "compiled_graphs_while_timed": graphs["timed"]}


def run_plain(plan: Plan, batches, vocab_size: int, device: torch.device) -> dict:
    """Plain PyTorch, no DeepSpeed: the ideal. A skipped layer's parameters get no gradient,
    so AdamW (fused on cuda) leaves them alone; bf16 through autocast.

    Args:
        plan: what to measure.
        batches: this rank's :class:`megaraptr.data.StepBatches`.
        vocab_size: the data's vocabulary (the model's embedding size).
        device: where to train.

    Returns:
        ``{"samples_ms": {k: [ms, ...]}, "phases_ms": {k: [{phase: ms}]} or None,
        "compiled_graphs": n, "compiled_graphs_while_timed": n, "kernels": {...}}``.
    """
    try:
        return _plain(plan, batches, vocab_size, device)
    finally:
        release(device)  # after _plain's frame, and with it the model, is gone


def _plain(plan: Plan, batches, vocab_size: int, device: torch.device) -> dict:

    model = build_plan_model(plan, vocab_size).to(device).train()
    blocks = find_blocks(model)
    kernels = resolve_kernels(plan.kernels, device=device.type)
    installed = apply_kernels(model, blocks, kernels)
    fused = device.type == "cuda" or kernels.mode != "eager"
    optimizer = torch.optim.AdamW(optimizer_groups(model), lr=LR, betas=BETAS, eps=EPS,
                                  weight_decay=WEIGHT_DECAY, fused=fused)
    schedule = build_schedule(parse_raptr_block(raptr_block(plan)),
                              num_layers=plan.num_layers, total_steps=plan.total_steps)
    sampler = SubnetworkSampler(schedule, plan.seed)
    phases = Phases(device, plan.breakdown)
    forward = phases.wrap("forward", lambda batch: model(**batch))
    backward = phases.wrap("backward", lambda loss: loss.backward())
    opt_step = phases.wrap("step", lambda: (optimizer.step(),
                                            optimizer.zero_grad(set_to_none=True)))

    def step_fn(step: int, batch: dict) -> int:
        mask = sampler.mask(step)
        set_layer_mask(blocks, mask)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=plan.precision == "bf16"):
            loss = forward(batch)
        backward(loss)
        opt_step()
        float(loss.detach())  # the loss reaches the host, as in the engine's train_step
        return mask.num_active

    return dict(loop(plan, batches, device, step_fn, phases), kernels=dict(
        kernels.to_dict(), optimizer=f"torch AdamW({'fused=True' if fused else 'foreach'})",
        **installed))


def fit_line(ks: List[int], times: List[float]) -> Dict[str, float]:
    """Least squares t(k) = fixed + per_layer * k over the measured (k, median) points."""
    n, mk, mt = len(ks), sum(ks) / len(ks), sum(times) / len(times)
    sxx = sum((k - mk) ** 2 for k in ks)
    slope = sum((k - mk) * (t - mt) for k, t in zip(ks, times)) / sxx if sxx else 0.0
    return {"fixed_ms": mt - slope * mk, "per_layer_ms": slope, "points": n}


def summarize(raw: dict, L: int) -> dict:
    """Medians, minima, speedups and the fit of one path's samples.

    Args:
        raw: what :func:`run_plain` or :func:`run_deepspeed` returned.
        L: the model's depth; speedup(k) = median t(L) / median t(k), measured, not fitted.

    Returns:
        ``{"per_k": {"k": {median_ms, min_ms, samples_ms, speedup[, phases_median_ms]}},
        "fit": {fixed_ms, per_layer_ms, points}}`` and the run's ``kernels`` and graph counts.
    """
    per_k = {}
    for k, samples in raw["samples_ms"].items():
        row = {"median_ms": statistics.median(samples), "min_ms": min(samples),
               "samples_ms": samples}
        if raw.get("phases_ms"):
            names = sorted({n for s in raw["phases_ms"][k] for n in s})
            row["phases_median_ms"] = {n: statistics.median(s.get(n, 0.0)
                                                            for s in raw["phases_ms"][k])
                                       for n in names}
        per_k[str(k)] = row
    full = per_k[str(L)]["median_ms"]
    for row in per_k.values():
        row["speedup"] = full / row["median_ms"]
    ks = sorted(int(k) for k in per_k)
    extra = {k: raw[k] for k in ("kernels", "compiled_graphs", "compiled_graphs_while_timed")
             if k in raw}
    return {"per_k": per_k, "fit": fit_line(ks, [per_k[str(k)]["median_ms"] for k in ks]),
            **extra}


def release(device: torch.device) -> None:
    """Free what the last path held before the next one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: str) -> str:
    """The card (``cuda``) or the CPU model and core count, for reports."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    return f"cpu: {model} ({os.cpu_count()} cores)"
