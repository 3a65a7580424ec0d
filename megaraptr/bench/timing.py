"""The two measured training loops of the step-time benchmark (driven by ``step_time``).

Both loops walk the same step plan, built from one raptr block (:func:`raptr_block`):

- step 1: the full model, untimed (every layer's optimizer state exists before timing);
- then one stage per k, in ascending order, of ``warmup + steps`` steps each: exact sampling
  with no fixed layers, so a fresh uniform subset of exactly k layers runs on every step, and
  the first ``warmup`` steps of each stage are not timed.

Since the ks ascend, the plan is an ordinary, valid RAPTR schedule, so one DeepSpeed engine
per ZeRO stage measures every k through its own schedule and sampler (nothing is swapped).
The plain-PyTorch loop takes each step's subnetwork from megaraptr's sampler under the same
schedule and seed, so both paths train the same subsets on the same batches.

Also here: :func:`summarize` (medians, speedups, the line fit). Run through
``python -m megaraptr.bench.step_time``; this module has no command line.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

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


def ds_config(plan: Plan, zero_stage: int) -> dict:
    """The DeepSpeed config of one ZeRO stage, with ``plan.extra_ds_config`` merged in."""
    params = {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY,
              "torch_adam": True}
    if plan.device == "cuda" and plan.kernels == "eager":
        params["fused"] = True  # passed through to torch.optim.AdamW with torch_adam
    config = {"train_micro_batch_size_per_gpu": plan.micro_batch,
              "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
              "wall_clock_breakdown": False,
              "optimizer": {"type": "AdamW", "params": params},
              "zero_optimization": {"stage": zero_stage},
              "raptr": raptr_block(plan)}
    if plan.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return merge(config, plan.extra_ds_config)


def merge(base: dict, extra: dict) -> dict:
    """``extra`` merged into a copy of ``base``, recursively for nested dicts."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and \
            isinstance(out.get(key), dict) else value
    return out


def _build_model(plan: Plan, vocab_size: int):
    from megaraptr.models import build_model

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


def _loop(plan: Plan, batches, device: torch.device, step_fn: Callable, phases: Phases) -> dict:
    """Run the plan; per k: timed step samples (ms) and, with breakdown, phase samples; the
    torch.compile graphs made during the run and during its timed steps."""
    from megaraptr.kernels import dynamo_counts

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
    from megaraptr.config import parse_raptr_block
    from megaraptr.kernels import apply_kernels, resolve_kernels
    from megaraptr.layers import find_blocks, set_layer_mask
    from megaraptr.models import optimizer_groups
    from megaraptr.sampler import SubnetworkSampler
    from megaraptr.schedule import build_schedule

    model = _build_model(plan, vocab_size).to(device).train()
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

    return dict(_loop(plan, batches, device, step_fn, phases), kernels=dict(
        kernels.to_dict(), optimizer=f"torch AdamW({'fused=True' if fused else 'foreach'})",
        **installed))


def run_deepspeed(plan: Plan, zero_stage: int, batches, vocab_size: int,
                  device: torch.device) -> dict:
    """DeepSpeed + megaraptr at one ZeRO stage: one engine walks the whole plan, each step
    timed around ``engine.train_step([batch])``; the engine is destroyed afterwards.

    Args and return value as :func:`run_plain`, plus ``zero_stage``.

    Raises:
        ConfigError: megaraptr refuses the configuration (e.g. a ZeRO stage it does not
            support yet); nothing was timed.
    """
    try:
        return _deepspeed(plan, zero_stage, batches, vocab_size, device)
    finally:
        release(device)


def _deepspeed(plan: Plan, zero_stage: int, batches, vocab_size: int,
               device: torch.device) -> dict:
    import megaraptr
    from megaraptr.models import optimizer_groups

    model = _build_model(plan, vocab_size)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(plan, zero_stage),
                                      total_steps=plan.total_steps, seed=plan.seed)
    phases = Phases(device, plan.breakdown)
    ds = engine.ds
    if plan.breakdown:  # instance attributes shadow the engine's methods for this run only
        ds.forward = phases.wrap("forward", ds.forward)
        ds.backward = phases.wrap("backward", ds.backward)
        ds.step = phases.wrap("step", ds.step)

    def step_fn(step: int, batch: dict) -> int:
        result = engine.train_step([batch])
        if result.step != step or not result.applied:
            raise RuntimeError(f"engine ran step {result.step} (applied {result.applied}), "
                               f"the plan expected step {step}")
        return result.mask.num_active

    try:
        return dict(_loop(plan, batches, device, step_fn, phases), kernels=engine.kernels)
    finally:
        if hasattr(ds, "destroy"):
            ds.destroy()  # DeepSpeed's hooks and buffers, before the next engine is built


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
