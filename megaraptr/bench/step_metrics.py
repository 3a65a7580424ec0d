"""Step-time figures that a slower path cannot win (pure arithmetic, unit-tested).

A path's step time at k active layers is t(k); plain PyTorch with the same kernels is the
reference p(k). What is reported, per path:

- its overhead against plain PyTorch: the per-layer ratio (its per-layer cost over plain's,
  from the least-squares line of each) and the fixed-cost difference (ms); and at every
  measured k the step-time ratio t(k) / p(k). A slower path is worse on at least one of them.
- at every measured k, its RAPTR speedup t(L) / t(k) against its own ideal: the speedup if t
  were exactly linear between the path's own measured t(k_min) and t(L), that is if a skipped
  layer cost nothing and an active one always the same. achieved / ideal below 1 means t(k)
  lies above that line: the path is not linear in k (each k is flagged beyond a tolerance).

Retired: "efficiency" (a path's speedup t(L)/t(L/2) over plain PyTorch's), which grows with a
path's per-layer cost: a ZeRO-3 path 3.3x slower per layer than plain PyTorch scored 1.30.

For a schedule, :func:`ideal_speedup` is t(L) / the mean over its steps of t(k) read off the
measured points (piecewise linear between measured ks), beside the straight-line fit's.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from megaraptr.planning.step_profile import fit_line

LINEAR_TOLERANCE = 0.03
"""achieved / ideal beyond 1 +- this flags a k as off the path's own line."""


def overhead_vs_plain(fit: dict, plain_fit: dict) -> Dict[str, Optional[float]]:
    """A path's per-layer ratio and fixed-cost difference against plain PyTorch's fits."""
    ratio = fit["per_layer_ms"] / plain_fit["per_layer_ms"] if plain_fit["per_layer_ms"] > 0 \
        else None
    return {"per_layer_ratio": ratio, "fixed_diff_ms": fit["fixed_ms"] - plain_fit["fixed_ms"]}


def interpolate(points: Dict[int, float], k: float) -> float:
    """t(k) read off measured points, linear between neighbours (outside them: the nearest
    segment, extended)."""
    ks = sorted(points)
    if len(ks) == 1:
        return points[ks[0]]
    for lo, hi in zip(ks, ks[1:]):
        if k <= hi or hi == ks[-1]:
            return points[lo] + (points[hi] - points[lo]) * (k - lo) / (hi - lo)
    raise AssertionError("unreachable")


def per_k(medians: Dict[int, float], L: int, plain: Optional[Dict[int, float]] = None,
          tolerance: float = LINEAR_TOLERANCE) -> Dict[int, dict]:
    """Per measured k: the speedup t(L)/t(k), the ideal from the path's own end points, their
    ratio, whether k is on the line (within ``tolerance``) and, given plain PyTorch's
    medians, t(k)/p(k)."""
    lo = min(medians)
    full = medians[L]
    rows = {}
    for k, t in sorted(medians.items()):
        line = medians[lo] + (full - medians[lo]) * (k - lo) / (L - lo) if L > lo else full
        row = {"median_ms": t, "speedup": full / t, "ideal_speedup": full / line,
               "achieved_over_ideal": line / t}
        row["linear"] = abs(row["achieved_over_ideal"] - 1) <= tolerance
        if plain is not None and k in plain:
            row["vs_plain"] = t / plain[k]
        rows[k] = row
    return rows


def ideal_speedup(points: Dict[int, float], L: int, layers: Sequence[float]) -> Dict[str, float]:
    """A schedule's ideal speedup t(L) / mean t(k) over its steps (``layers``: the active
    layers of each step, or expected ones), from measured points (piecewise linear) and from
    their least-squares line; and how far apart the two are."""
    fit = fit_line(sorted(points), [points[k] for k in sorted(points)])
    mean_points = sum(interpolate(points, k) for k in layers) / len(layers)
    mean_line = fit["fixed_ms"] + fit["per_layer_ms"] * sum(layers) / len(layers)
    out = {"from_points": points[L] / mean_points,
           "from_line": (fit["fixed_ms"] + fit["per_layer_ms"] * L) / mean_line}
    out["line_minus_points"] = out["from_line"] - out["from_points"]
    return out


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Median, min and max of repeats (the spread of a few pairs)."""
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1], "n": n}


def meets(values: Sequence[float], threshold: float) -> Tuple[int, int]:
    """(how many of ``values`` are >= threshold, how many there are)."""
    return sum(v >= threshold for v in values), len(values)

