"""Wall-clock cost model of a schedule: t(k) = fixed + per_layer * k, and its ideal speedup.

A training step that runs k of L layers takes t(k) = fixed + per_layer * k in plain PyTorch
(measured close to linear in k on one H200: ``docs/gpu/``); ``fixed`` is what does not
shrink with the layers (embeddings, head and loss, the optimizer's share outside the blocks). The ideal
wall-clock speedup of a schedule is the full step's time over the mean step time:
t(L) / mean over steps of t(E[k]); by linearity that is exact in expectation for every
sampling. The costs come from one of three places, each labelled where it is printed:

- :data:`REFERENCE`: plain-PyTorch costs measured on one NVIDIA H200 for the shipped shapes;
- :func:`parse_costs`: given on the command line (``layer=5.05,fixed=6.0``);
- :func:`profile`: a short profile here, the step-time benchmark's plain loop
  (:func:`megaraptr.planning.step_profile.run_plain`) at k = 0, L/2 and L on random tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from megaraptr.core.schedule import Schedule
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError
from megaraptr.models import num_layers
from megaraptr.planning.step_profile import Plan, device_name, run_plain, summarize

_H200 = ("one NVIDIA H200, plain PyTorch (eager blocks, bf16 autocast, fused AdamW), "
         "one step of {tokens} tokens, vocab {vocab}")


@dataclass(frozen=True)
class StepCosts:
    """Step time, in ms, of a step that runs k layers: ``fixed + per_layer * k``."""

    fixed: float
    per_layer: float
    source: str
    """Where the numbers come from (printed with them)."""
    unit: str = "ms"
    """What fixed and per_layer count: milliseconds, or FLOPs for a shape-only estimate."""

    def step_ms(self, layers: float) -> float:
        return self.fixed + self.per_layer * layers


REFERENCE = {
    ("bert", "base"): StepCosts(8.01, 4.78, "reference: BERT-base shape, masked MLM head, "
                                + _H200.format(tokens="64 x 512", vocab=30522)
                                + " (docs/gpu/step_costs-h200-2026-11-27.json)"),
    ("gpt", "medium"): StepCosts(19.36, 3.69, "reference: GPT-medium shape, full LM head, "
                                 + _H200.format(tokens="16 x 1024", vocab=50304)
                                 + " (docs/gpu/step_costs-h200-2026-11-27.json)"),
    ("bert", "medium"): StepCosts(5.29, 3.72, "reference: BERT-large shape, masked MLM head, "
                                  + _H200.format(tokens="32 x 512", vocab=30522)
                                  + " (docs/gpu/step_costs-h200-2026-11-27.json)"),
    ("gpt", "1.3b"): StepCosts(15.05, 5.70, "reference: GPT 1.3B shape, full LM head, "
                               + _H200.format(tokens="8 x 1024", vocab=50304)
                               + " (docs/gpu/step_costs-h200-2026-11-27.json)"),
    ("gpt", "1.6b"): StepCosts(10.24, 7.24, "reference: 1.6B decoder shape, full LM head, "
                               + _H200.format(tokens="8 x 1024", vocab=32768)
                               + " (docs/gpu/step_costs-h200-2026-11-27.json)"),
}
"""Measured plain-PyTorch costs (ms) by (model, size), every one from the committed JSON named
in its source (eager blocks). Run to run on the same card they move: BERT-base eager 7.6 + 4.68
and 8.7 + 4.67 in the two runs of docs/gpu/gpu_bench-h200-2026-11-27*.json; the ideal of
6-8-10-12 is 1.28x here, 1.25-1.28x over those runs and both kernels (1.29x came from older,
uncommitted costs, 6.0 + 5.05)."""


def flop_costs(hidden: int, *, seq_len: int, vocab_size: int, mlm: bool = False,
               ffn: int = 0) -> StepCosts:
    """Costs proportional to FLOPs, from a model's shape alone (no measurement): per token, a
    layer's matrix products 2 (4 h^2 + 2 h f) plus attention 4 T h (f = ffn, 4 h by default),
    the LM head 2 h V (BERT's on the 15% masked tokens only), times 3 for forward and
    backward. Everything else (optimizer, embedding, communication) is left out, so the ideal
    speedup it gives is the FLOP-bound one; measured costs (``--costs``, ``--profile``) are
    better where they exist."""
    ffn = ffn or 4 * hidden
    layer = 3 * (2 * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * seq_len * hidden)
    head = 3 * 2 * hidden * vocab_size * (0.15 if mlm else 1.0)
    return StepCosts(float(head), float(layer), f"FLOP-proportional estimate from the shape "
                     f"(hidden {hidden}, ffn {ffn}, seq {seq_len}, vocab {vocab_size}"
                     f"{', MLM head on masked tokens' if mlm else ''}), per token", "FLOPs")


def parse_costs(text: str) -> StepCosts:
    """``"layer=5.05,fixed=6.0"`` (ms, any order) -> StepCosts.

    Raises:
        ConfigError: a malformed, missing or negative value.
    """
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            values[key.strip()] = float(value) if sep else None
        except ValueError:
            values[key.strip()] = None
        if key.strip() not in ("layer", "fixed") or values[key.strip()] is None:
            raise ConfigError("--costs", f"{part!r}: expected layer=MS,fixed=MS, e.g. "
                              "layer=5.05,fixed=6.0")
    if set(values) != {"layer", "fixed"} or values["layer"] <= 0 or values["fixed"] < 0:
        raise ConfigError("--costs", f"{text!r}: needs layer > 0 and fixed >= 0 (ms), e.g. "
                          "layer=5.05,fixed=6.0")
    return StepCosts(values["fixed"], values["layer"], "given (--costs)")


def mean_layers(schedule: Schedule, first: int, last: int) -> float:
    """Expected active layers per step over steps first..last (PLD's decaying theta too)."""
    def runs(upto: int) -> float:
        return schedule.expected_flops_fraction(upto) * upto * schedule.num_layers if upto else 0.0

    return (runs(last) - runs(first - 1)) / (last - first + 1)


def _keep(schedule: Schedule, stage: Stage) -> str:
    start, end = schedule.keep_prob_at(stage.first_step), schedule.keep_prob_at(stage.last_step)
    return f"{start:.4g}" if abs(start - end) < 5e-5 else f"{start:.4g}->{end:.4g}"


def stage_rows(schedule: Schedule, costs: Optional[StepCosts]) -> List[dict]:
    """One row per stage and one for the whole run: steps, keep probability, expected active
    layers, layer-FLOPs fraction and, with costs, mean step time and ideal speedup."""
    L = schedule.num_layers
    spans = [(s.name, s.first_step, s.last_step, _keep(schedule, s)) for s in schedule.stages]
    spans.append(("whole run", 1, schedule.total_steps, ""))
    rows = []
    for name, first, last, keep in spans:
        k = mean_layers(schedule, first, last)
        row = {"stage": name, "steps": f"{first}-{last}", "num_steps": last - first + 1,
               "keep_prob": keep, "expected_layers": k, "layer_flops": k / L}
        if costs is not None:
            row["step_ms"] = costs.step_ms(k)
            row["ideal_speedup"] = costs.step_ms(L) / row["step_ms"]
        rows.append(row)
    return rows


def ideal_speedup(schedule: Schedule, costs: StepCosts) -> float:
    """t(L) / mean step time of the whole schedule."""
    return stage_rows(schedule, costs)[-1]["ideal_speedup"]


class RandomBatches:
    """The step-time loop's batch source: one fixed batch of random tokens (never all zeros)
    with MLM labels on 15% of positions (bert) or next-token labels (gpt)."""

    def __init__(self, model: str, micro_batch: int, seq_len: int, vocab_size: int, seed: int):
        import torch

        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, vocab_size, (micro_batch, seq_len), generator=gen)
        if model == "bert":
            labels = torch.full_like(ids, -100)
            masked = torch.rand(micro_batch, seq_len, generator=gen) < 0.15
            labels[masked] = ids[masked]
        else:
            labels = torch.randint(5, vocab_size, (micro_batch, seq_len), generator=gen)
        self.batch = {"input_ids": ids, "labels": labels}

    def step_batches(self, step: int) -> List[dict]:
        return [self.batch]


def profile(model: str, size: str, *, micro_batch: int, seq_len: int, vocab_size: int,
            device: str, precision: str, steps: int, warmup: int, seed: int = 1234) -> StepCosts:
    """Fit t(k) to the median plain-PyTorch step at k = 0, L/2, L (fresh random k-subsets).

    Args:
        model, size: the reference model ("bert"/"gpt", a size of megaraptr.models.SIZES).
        micro_batch, seq_len, vocab_size: the shape of the one batch every step trains on.
        device: "cpu" or "cuda"; precision: "fp32" or "bf16" (autocast).
        steps, warmup: timed and untimed steps per k.
    """
    import torch


    L = num_layers(size)
    plan = Plan(model=model, size=size, num_layers=L, ks=sorted({0, L // 2, L}), steps=steps,
                warmup=warmup, micro_batch=micro_batch, seq_len=seq_len, precision=precision,
                device=device, seed=seed)
    batches = RandomBatches(model, micro_batch, seq_len, vocab_size, seed)
    fit = summarize(run_plain(plan, batches, vocab_size, torch.device(device)), L)["fit"]
    if fit["per_layer_ms"] <= 0:
        raise ConfigError("--profile", f"measured {fit['per_layer_ms']:.3g} ms per layer; the "
                          "timings are too noisy here: give --costs instead")
    source = (f"profiled here: {model}-{size} on {device_name(device)}, plain PyTorch, "
              f"{precision}, {micro_batch} x {seq_len} tokens, vocab {vocab_size}, median of "
              f"{steps} steps at k = {', '.join(map(str, plan.ks))}")
    return StepCosts(round(max(fit["fixed_ms"], 0.0), 3), round(fit["per_layer_ms"], 3), source)
