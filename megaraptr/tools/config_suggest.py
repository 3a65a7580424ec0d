"""``megaraptr-config suggest``: a RAPTR schedule for any depth and a target of layer FLOPs.

The rule (the paper's shape, generalised): S stages of equal length whose expected depths rise
in equal steps from d_1 to the full depth L, so the run spends (d_1 + L) / 2L of the layer
FLOPs; for a target f, d_1 = (2f - 1) L. "6-8-10-12" is f = 0.75 at L = 12 (the paper's BERT
setting), "12-16-20-24" the same at L = 24. Depths are rounded to whole layers (so "exact"
sampling can use them too) and the fraction they give is printed; S is 4, or fewer when the
ramp has fewer whole depths. The first stage keeps the two fixed layers at least (first and
last), so f is at least (L + 2) / 2L.
"""
from __future__ import annotations

from typing import List

from megaraptr import methods
from megaraptr.errors import ConfigError


def suggest_depths(layers: int, flops: float, stages: int = 4, fixed: int = 2) -> List[int]:
    """Whole expected depths of ``stages`` equal stages from (2f - 1) L up to L.

    Raises:
        ConfigError: a depth, fraction or stage count out of range (one line, with the range).
    """
    if layers < 2:
        raise ConfigError("--layers", f"{layers}; allowed: 2 or more (one layer cannot skip)")
    lowest = (layers + min(fixed, layers)) / (2 * layers)
    if not lowest <= flops <= 1.0:
        raise ConfigError("--flops", f"{flops:g}; allowed: {lowest:.4g} to 1 for {layers} layers "
                          f"with {fixed} fixed (the first stage keeps the fixed layers)")
    if stages < 1:
        raise ConfigError("--stages", f"{stages}; allowed: 1 or more")
    first = round((2 * flops - 1) * layers)
    stages = max(1, min(stages, layers - first + 1))
    if stages == 1:
        return [layers]
    return [round(first + (layers - first) * i / (stages - 1)) for i in range(stages)]


def suggest(layers: int, flops: float, stages: int, train_steps: int) -> List[str]:
    """The lines ``suggest`` prints: the schedule, its check, and the block to paste."""
    depths = suggest_depths(layers, flops, stages)
    text = "-".join(str(d) for d in depths)
    block = {"enabled": True, "schedule": text}
    schedule = methods.build_schedule(methods.parse_raptr_block(block), num_layers=layers,
                                      total_steps=train_steps)  # the checks training makes
    probs = ", ".join(f"{s.keep_prob:.3g}" for s in schedule.stages)
    return [f"schedule: {text} ({len(depths)} equal stages; keep probability {probs} with the "
            f"first and last layer fixed)",
            f"layer FLOPs: {schedule.expected_flops_fraction():.4f} of full training "
            f"(target {flops:g})",
            f'"raptr": {{"enabled": true, "schedule": "{text}"}}']
