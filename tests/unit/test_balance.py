"""Tests of megaraptr.balance: partitions of the layers into pipeline stages and their costs.

Pure: no DeepSpeed engine, no torch (one test imports DeepSpeed's partition helper, the
specification of the uniform split, and is skipped without it).
"""
import itertools
import random
import time

import pytest

from megaraptr.core.config import CostSpec
from megaraptr.core.partition import check_partition, quotas, uniform_partition
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.planning.balance import (Costs, best_partition, busiest_time, imbalance,
                                        plan_partitions, predicted_step_time, stage_overheads,
                                        stage_times)


def _stage(keep_prob, *, layers=12, fixed=(0, 11)):
    return Stage(0, "s", 1, 100, keep_prob, layers, tuple(fixed))


def _schedule(depths, *, layers, steps=400, fixed=(0, -1)):
    block = {"enabled": True, "schedule": depths, "fixed_layers": list(fixed)}
    return build_schedule(parse_raptr_block(block), num_layers=layers, total_steps=steps)


def _all_partitions(num_layers, num_stages):
    for cut in itertools.combinations(range(1, num_layers), num_stages - 1):
        yield (0,) + cut + (num_layers,)


# ---------------------------------------------------------------- uniform split and checks


def test_uniform_partition_matches_deepspeed():
    utils = pytest.importorskip("deepspeed.runtime.utils")
    for layers in range(1, 41):
        for stages in range(1, layers + 1):
            assert uniform_partition(layers, stages) == tuple(
                utils.partition_uniform(num_items=layers, num_parts=stages)), (layers, stages)


def test_uniform_partition_examples_and_limits():
    assert uniform_partition(10, 4) == (0, 3, 6, 8, 10)  # the first L mod S stages hold more
    assert uniform_partition(48, 8) == tuple(range(0, 49, 6))
    assert uniform_partition(5, 1) == (0, 5)
    for layers, stages in ((4, 5), (4, 0)):
        with pytest.raises(ConfigError) as info:
            uniform_partition(layers, stages)
        assert str(info.value).startswith("pipeline_stages: ") and "\n" not in str(info.value)


def test_check_partition():
    assert check_partition([0, 2, 5], 5) == (0, 2, 5)
    assert check_partition((0, 5), 5, 1) == (0, 5)
    for bad in ((0, 2, 2, 5), (1, 5), (0, 4), (0,), (0, 3, 2, 5)):
        with pytest.raises(ValueError, match="does not split 5 layers"):
            check_partition(bad, 5)
    with pytest.raises(ValueError, match="expected 3"):
        check_partition((0, 2, 5), 5, 3)


def test_costs_from_spec():
    assert Costs.from_spec(CostSpec(layer=3.93, head=11.8)) == Costs(3.93, 0.0, 11.8)
    assert Costs(2.0) == Costs(2.0, 0.0, 0.0)


# ---------------------------------------------------------------- quotas and times


def test_quotas():
    parts = (0, 6, 12)
    assert quotas(_stage(0.4), parts) == pytest.approx((3.0, 3.0))  # 1 + 0.4 * 5 each
    assert quotas(_stage(0.5), (0, 1, 11, 12)) == (1.0, 5.0, 1.0)  # lone fixed layers stay 1
    assert quotas(_stage(1.0), (0, 5, 12)) == (5.0, 7.0)  # a full stage runs everything
    assert quotas(_stage(0.0, fixed=()), parts) == (0.0, 0.0)
    for depth in range(2, 49):  # whole quotas come out whole, not a hair below
        p = (depth - 2) / 46
        assert quotas(_stage(p, layers=48, fixed=(0, 47)), (0, 48)) == (float(depth),)


def test_stage_times_and_overheads():
    costs = Costs(2.0, embedding=1.0, head=5.0)
    assert stage_overheads(costs, 3) == (1.0, 0.0, 5.0)
    assert stage_overheads(costs, 1) == (6.0,)
    assert stage_times(costs, (0, 2, 4, 6), (2, 1, 0)) == (5.0, 2.0, 5.0)
    with pytest.raises(ValueError):
        stage_times(costs, (0, 2, 6), (1, 2, 3))


def test_imbalance_and_predicted_step_time():
    parts = uniform_partition(48, 8)
    full = _stage(1.0, layers=48, fixed=(0, 47))
    assert imbalance(Costs(1.0), parts, full) == 1.0
    assert predicted_step_time(Costs(1.0), parts, full, 32) == (32 + 7) * 6.0
    # The head on the last stage: 9 of a mean of 51 / 8.
    assert imbalance(Costs(1.0, head=3.0), parts, full) == pytest.approx(9 / (51 / 8))
    half = _stage(22 / 46, layers=48, fixed=(0, 47))  # q = 1 + 5p on the ends, 6p elsewhere
    assert imbalance(Costs(1.0), parts, half) == pytest.approx((1 + 5 * 22 / 46) / 3)


def test_busiest_time_counts_the_rounding():
    # Without fixed costs the expected busiest stage is the largest quota time ...
    stage = _stage(0.5, layers=8, fixed=(0,))
    parts = (0, 3, 8)  # quotas 2 and 2.5
    assert busiest_time(Costs(1.0), parts, stage) == pytest.approx(2.5)
    # ... with them it can be more: stage 0 (2 layers + 0.8) is busiest only when stage 1
    # rounds down (half the steps): E max = 0.5 * 3 + 0.5 * 2.8 = 2.9 > max(2.8, 2.5).
    assert busiest_time(Costs(1.0, embedding=0.8), parts, stage) == pytest.approx(2.9)


# ---------------------------------------------------------------- best partition


def test_best_partition_is_optimal_on_small_cases():
    rng = random.Random(0)
    for _ in range(120):
        layers = rng.randint(2, 9)
        stages = rng.randint(1, min(layers, 4))
        fixed = tuple(sorted(rng.sample(range(layers), rng.randint(0, min(2, layers)))))
        stage = _stage(rng.choice([0.0, 0.25, 0.4, 0.7, 1.0]), layers=layers, fixed=fixed)
        costs = Costs(1.0, rng.choice([0.0, 0.3, 1.0]), rng.choice([0.0, 0.5, 3.0]))
        best = best_partition(costs, stage, layers, stages)
        every = list(_all_partitions(layers, stages))
        assert best in every
        most = lambda p: max(stage_times(costs, p, quotas(stage, p)))  # noqa: E731
        assert most(best) == pytest.approx(min(map(most, every)))
        assert busiest_time(costs, best, stage) == pytest.approx(
            min(busiest_time(costs, p, stage) for p in every))


def test_best_partition_prefers_uniform_and_small_spread():
    full = _stage(1.0, layers=10, fixed=())
    assert best_partition(Costs(1.0), full, 10, 4) == uniform_partition(10, 4)
    assert best_partition(Costs(1.0), _stage(1.0, layers=48, fixed=(0, 47)), 48, 8) == \
        uniform_partition(48, 8)
    # 24 of 48 layers: the ends hold the fixed layers, so they take fewer layers.
    half = _stage(22 / 46, layers=48, fixed=(0, 47))
    parts = best_partition(Costs(1.0), half, 48, 8)
    assert max(quotas(half, parts)) == pytest.approx(7 * 22 / 46)
    assert parts == (0, 5, 12, 18, 24, 30, 36, 43, 48)
    # A heavy head moves layers off the last stage.
    head = best_partition(Costs(1.0, head=3.0), _stage(1.0, layers=12, fixed=()), 12, 3)
    assert head == (0, 5, 10, 12)


def test_best_partition_is_fast_for_96_layers_16_stages():
    stage = _stage(0.5, layers=96, fixed=(0, 95))
    start = time.perf_counter()
    parts = best_partition(Costs(3.93, 1.2, 11.8), stage, 96, 16)
    assert time.perf_counter() - start < 5.0
    assert len(parts) == 17 and parts[0] == 0 and parts[-1] == 96


def test_best_partition_rejects_bad_sizes():
    with pytest.raises(ConfigError):
        best_partition(Costs(1.0), _stage(0.5), 12, 13)
    with pytest.raises(ValueError, match="expected 10"):
        best_partition(Costs(1.0), _stage(0.5), 10, 2)


# ---------------------------------------------------------------- plans


def test_plan_with_repartitioning():
    schedule = _schedule("24-32-40-48", layers=48)
    costs = Costs(1.0)
    plan = plan_partitions(schedule, costs, 8)
    assert len(plan) == len(schedule.stages)
    assert plan[0] == best_partition(costs, schedule.stages[0], 48, 8)
    assert plan[1:] == (uniform_partition(48, 8),) * 3  # 6.8% better at p = 0.65: moved
    assert plan_partitions(schedule, costs, 8) == plan  # deterministic
    # A gain threshold above every possible gain keeps the first partition for the run.
    assert plan_partitions(schedule, costs, 8, min_gain=0.5) == (plan[0],) * 4
    # Each move is worth at least min_gain; every kept partition is within it of the best.
    for previous, parts, stage in zip(plan, plan[1:], schedule.stages[1:]):
        best = busiest_time(costs, best_partition(costs, stage, 48, 8), stage)
        if parts != previous:
            assert busiest_time(costs, parts, stage) <= 0.97 * busiest_time(costs, previous, stage)
        else:
            assert best > 0.97 * busiest_time(costs, parts, stage)


def test_static_plan_beats_its_candidates():
    schedule = _schedule("24-32-40-48", layers=48)
    for costs in (Costs(1.0), Costs(3.93, 1.18, 11.8)):
        plan = plan_partitions(schedule, costs, 8, repartition=False)
        assert len(set(plan)) == 1 and len(plan) == 4

        def total(parts):
            return sum(s.num_steps * busiest_time(costs, parts, s) for s in schedule.stages)

        others = [uniform_partition(48, 8)] + [best_partition(costs, s, 48, 8)
                                               for s in schedule.stages]
        assert total(plan[0]) <= min(map(total, others)) + 1e-9


def test_plan_rejects_too_many_pipeline_stages():
    with pytest.raises(ConfigError, match="pipeline_stages"):
        plan_partitions(_schedule("6-8-10-12", layers=12), Costs(1.0), 13)
