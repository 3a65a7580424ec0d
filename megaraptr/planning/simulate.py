"""Pipeline step-time simulator: RAPTR subnetworks under synchronous 1F1B pipeline parallelism.

``python -m megaraptr.simulate --layers 48 --stages 8 --micro-batches 32 --schedule 24-32-40-48``
draws every step's subnetwork of a whole schedule, exactly as the sampler would (the same
keyed hash), for ``bernoulli``, ``exact`` and ``balanced`` sampling, each under three
partitions of the layers into pipeline stages (:mod:`megaraptr.balance`): DeepSpeed's uniform
split, the best static partition for the run, and per-schedule-stage re-partitioning. Each
step's time is a simulated 1F1B schedule:

- pipeline stage s runs min(S - s - 1, M) warmup forwards, then alternates one forward and one
  backward, then the remaining backwards; F of micro-batch m on stage s waits for F of m on
  s - 1, B of m on s waits for B of m on s + 1 (plus ``p2p`` per hop);
- a stage's per-micro-batch time is its overhead (embedding on the first, head on the last)
  plus one layer cost per active layer, split forward : backward = 1 : backward_ratio;
- every micro-batch of a step runs the same subnetwork.

The **ideal** of a step is the same 1F1B schedule with that step's total work spread evenly
over the pipeline stages: the pipeline bubble is kept, only the imbalance is gone. The
**floor** of a partition is the 1F1B step with every pipeline stage at its expected time (its
quota): a step's length is a longest path, convex and nondecreasing in the stage times, so by
Jensen no sampler that keeps each non-fixed layer with probability p does better on average
under that partition; floor / ideal is what whole layers (and the embedding and head) cost.
The **full-model** step is the full model under the fastest of the partitions tried (its own
best and every planned one). Command line and table: :mod:`megaraptr.tools.simulate`.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np

from megaraptr.core.partition import Partition, quotas, uniform_partition
from megaraptr.core.sampler import ROUNDING_KEY, uniform
from megaraptr.core.schedule import Schedule
from megaraptr.core.stage import Stage
from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.planning.balance import (Costs, best_partition, imbalance, plan_partitions,
                                        stage_overheads)

SAMPLINGS = ("bernoulli", "exact", "balanced")
PARTITIONS = ("uniform", "static", "repartition")


@lru_cache(maxsize=16)
def pipeline_order(num_stages: int, micro_batches: int) -> Tuple[Tuple[int, bool, int], ...]:
    """Every (pipeline stage, is_forward, micro-batch) op of one 1F1B step, in an order that
    respects both each stage's own op order and the cross-stage dependencies."""
    per_stage = []
    for s in range(num_stages):
        warm = min(num_stages - s - 1, micro_batches)
        ops = [(True, m) for m in range(warm)]
        for i in range(micro_batches - warm):
            ops += [(True, warm + i), (False, i)]
        ops += [(False, m) for m in range(micro_batches - warm, micro_batches)]
        per_stage.append(ops)
    done, order, heads = set(), [], [0] * num_stages
    while len(order) < 2 * num_stages * micro_batches:
        for s in range(num_stages):
            while heads[s] < len(per_stage[s]):
                fwd, m = per_stage[s][heads[s]]
                dep = (s - 1, True, m) if fwd else (s + 1, False, m)
                if 0 <= dep[0] < num_stages and dep not in done:
                    break
                order.append((s, fwd, m))
                done.add((s, fwd, m))
                heads[s] += 1
    return tuple(order)


def simulate_1f1b(times, micro_batches: int, *, backward_ratio: float = 2.0,
                  p2p: float = 0.0) -> np.ndarray:
    """Length of a synchronous 1F1B step for each row of per-stage fwd+bwd times.

    Args:
        times: array (steps, S) of each pipeline stage's per-micro-batch fwd+bwd time.
        micro_batches: M, micro-batches per step.
        backward_ratio: backward time / forward time.
        p2p: time of one activation or gradient hop between neighbouring stages.

    Returns:
        array (steps,) of step times. Rows that repeat are simulated once.
    """
    times = np.atleast_2d(np.asarray(times, dtype=float))
    unique, inverse = np.unique(times, axis=0, return_inverse=True)
    fwd = unique / (1.0 + backward_ratio)
    bwd = unique - fwd
    num_stages, width = times.shape[1], len(unique)
    clock = np.zeros((num_stages, width))
    f_end = np.zeros((num_stages, micro_batches, width))
    b_end = np.zeros((num_stages, micro_batches, width))
    for s, forward, m in pipeline_order(num_stages, micro_batches):
        if forward:
            start = np.maximum(clock[s], f_end[s - 1, m] + p2p) if s else clock[s]
            clock[s] = f_end[s, m] = start + fwd[:, s]
        else:
            start = np.maximum(clock[s], b_end[s + 1, m] + p2p) if s < num_stages - 1 \
                else clock[s]
            clock[s] = b_end[s, m] = start + bwd[:, s]
    return clock.max(axis=0)[np.reshape(inverse, -1)]


def make_schedule(num_layers: int, depths: str, steps: int, sampling: str,
                  fixed_layers: Sequence[int]) -> Schedule:
    """The raptr schedule ``depths`` ("24-32-40-48", equal stages) over ``steps`` steps."""
    block = {"enabled": True, "schedule": depths, "sampling": sampling,
             "fixed_layers": list(fixed_layers)}
    return build_schedule(parse_raptr_block(block), num_layers=num_layers, total_steps=steps)


def stage_of_steps(schedule: Schedule) -> np.ndarray:
    """Schedule-stage index of steps 1..N (array of N)."""
    return np.concatenate([np.full(s.num_steps, s.index) for s in schedule.stages])


def draws(schedule: Schedule, seed: int) -> np.ndarray:
    """uniform(seed, step, layer) for steps 1..N and every layer (NaN on full stages)."""
    out = np.full((schedule.total_steps, schedule.num_layers), np.nan)
    for stage in schedule.stages:
        if not stage.is_full:
            for step in range(stage.first_step, stage.last_step + 1):
                out[step - 1] = [uniform(seed, step, i) for i in range(schedule.num_layers)]
    return out


def active_layers(schedule: Schedule, sampling: str, u: np.ndarray) -> np.ndarray:
    """Boolean (N, L): the layers ``bernoulli`` or ``exact`` sampling runs on each step,
    the same masks :class:`megaraptr.sampler.SubnetworkSampler` gives."""
    active = np.ones(u.shape, dtype=bool)
    for stage in schedule.stages:
        if stage.is_full:
            continue
        rows = slice(stage.first_step - 1, stage.last_step)
        free = [i for i in range(stage.num_layers) if i not in stage.fixed]
        block = u[rows][:, free]
        if sampling == "bernoulli":
            kept = block < stage.keep_prob
        else:
            rank = np.argsort(np.argsort(block, axis=1, kind="stable"), axis=1, kind="stable")
            kept = rank < stage.exact_layers - len(stage.fixed)
        active[rows, free] = kept
    return active


def stage_counts(schedule: Schedule, sampling: str, plan: Sequence[Partition], seed: int,
                 active: np.ndarray = None) -> np.ndarray:
    """Integer (N, S): active layers of each pipeline stage on each step under ``plan``."""
    num_stages = len(plan[0]) - 1
    counts = np.zeros((schedule.total_steps, num_stages), dtype=np.int64)
    for stage, parts in zip(schedule.stages, plan):
        first, last = stage.first_step, stage.last_step
        if sampling == "balanced":
            rounding = np.array([uniform(seed, t, ROUNDING_KEY) for t in range(first, last + 1)])
            for s, q in enumerate(quotas(stage, parts)):
                counts[first - 1:last, s] = math.floor(q) + (rounding < q - math.floor(q))
        else:
            for s, (lo, hi) in enumerate(zip(parts, parts[1:])):
                counts[first - 1:last, s] = active[first - 1:last, lo:hi].sum(axis=1)
    return counts


def _summary(step: np.ndarray, ideal: np.ndarray, floor: np.ndarray, imb: np.ndarray,
             full: float) -> dict:
    return {"mean_step": float(step.mean()), "mean_ideal": float(ideal.mean()),
            "ratio_to_ideal": float(step.mean() / ideal.mean()),
            "floor_to_ideal": float(floor.mean() / ideal.mean()),
            "speedup_vs_full": float(full / step.mean()), "mean_imbalance": float(imb.mean())}


def simulate(num_layers: int, num_stages: int, micro_batches: int, costs: Costs, depths: str,
             steps: int, *, fixed_layers: Sequence[int] = (0, -1), seed: int = 0,
             backward_ratio: float = 2.0, p2p: float = 0.0, min_gain: float = 0.03) -> dict:
    """Simulate every step of the schedule for each sampling and partition; see the module doc.

    Returns:
        a JSON-ready dict: ``config``, ``full_model``, ``plans`` (partition per schedule stage
        for each partition mode), ``rows`` (one per sampling x partition, with ``stages``, the
        same numbers per schedule stage) and ``skipped`` (samplings the schedule does not
        allow, with the reason).
    """
    config = dict(layers=num_layers, stages=num_stages, micro_batches=micro_batches,
                  layer_cost=costs.layer, embedding_cost=costs.embedding, head_cost=costs.head,
                  schedule=depths, steps=steps, fixed_layers=list(fixed_layers), seed=seed,
                  backward_ratio=backward_ratio, p2p_cost=p2p, min_gain=min_gain)
    run = dict(micro_batches=micro_batches, backward_ratio=backward_ratio, p2p=p2p)
    base = make_schedule(num_layers, depths, steps, "bernoulli", fixed_layers)
    plans = {"uniform": (uniform_partition(num_layers, num_stages),) * len(base.stages),
             "static": plan_partitions(base, costs, num_stages, repartition=False),
             "repartition": plan_partitions(base, costs, num_stages, repartition=True,
                                            min_gain=min_gain)}
    extra = np.array(stage_overheads(costs, num_stages))
    full_stage = Stage(0, "full", 1, 1, 1.0, num_layers, base.stages[0].fixed)
    candidates = sorted({best_partition(costs, full_stage, num_layers, num_stages)}
                        | {p for plan in plans.values() for p in plan})
    full_steps = simulate_1f1b([extra + costs.layer * np.diff(p) for p in candidates], **run)
    full_parts = candidates[int(np.argmin(full_steps))]
    full = float(full_steps.min())
    even = (extra.sum() + costs.layer * num_layers) / num_stages
    full_ideal = float(simulate_1f1b(np.full(num_stages, even), **run)[0])
    floors = {(mode, stage.index): float(simulate_1f1b(
        extra + costs.layer * np.array(quotas(stage, plan[stage.index])), **run)[0])
        for mode, plan in plans.items() for stage in base.stages}
    index = stage_of_steps(base)
    u = draws(base, seed)
    rows, skipped = [], {}
    for sampling in SAMPLINGS:
        try:
            schedule = make_schedule(num_layers, depths, steps, sampling, fixed_layers)
        except ValueError as err:
            skipped[sampling] = str(err)
            continue
        active = None if sampling == "balanced" else active_layers(schedule, sampling, u)
        for mode in PARTITIONS:
            plan = plans[mode]
            times = extra + costs.layer * stage_counts(schedule, sampling, plan, seed, active)
            step = simulate_1f1b(times, **run)
            even = np.repeat(times.mean(axis=1, keepdims=True), num_stages, axis=1)
            ideal = simulate_1f1b(even, **run)
            imb = times.max(axis=1) / np.maximum(times.mean(axis=1), 1e-300)
            floor = np.array([floors[mode, k] for k in index])
            row = dict(sampling=sampling, partition=mode,
                       **_summary(step, ideal, floor, imb, full))
            row["stages"] = []
            for stage, parts in zip(schedule.stages, plan):
                sel = index == stage.index
                row["stages"].append(dict(
                    name=stage.name, steps=stage.num_steps, keep_prob=stage.keep_prob,
                    partition=list(parts), predicted_imbalance=imbalance(costs, parts, stage),
                    **_summary(step[sel], ideal[sel], floor[sel], imb[sel], full)))
            rows.append(row)
    return {"config": config,
            "full_model": {"partition": list(full_parts), "step": full, "ideal": full_ideal,
                           "ratio_to_ideal": full / full_ideal},
            "plans": {k: [list(p) for p in v] for k, v in plans.items()},
            "rows": rows, "skipped": skipped}


def to_rows(result: dict) -> List[Dict]:
    """The table rows of a result: one dict of printable cells per sampling x partition."""
    return [{"sampling": r["sampling"], "partition": r["partition"],
             "step": f"{r['mean_step']:.4g}", "/ideal": f"{r['ratio_to_ideal']:.3f}",
             "floor": f"{r['floor_to_ideal']:.3f}",
             "speedup": f"{r['speedup_vs_full']:.3f}x", "imbalance": f"{r['mean_imbalance']:.3f}",
             "/ideal per schedule stage": " ".join(f"{s['ratio_to_ideal']:.3f}"
                                                   for s in r["stages"])}
            for r in result["rows"]]

