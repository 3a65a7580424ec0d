"""Tests of megaraptr.schedule: applied step -> Stage, stage lengths, FLOPs, fingerprint.

Pure: no DeepSpeed, no process group, no torch.
"""
import random

import pytest

from megaraptr.core.schedule import Schedule, full_schedule, resolve_fixed_layers
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block


def _build(block, *, layers=12, steps=100) -> Schedule:
    cfg = parse_raptr_block(dict({"enabled": True}, **block))
    return build_schedule(cfg, num_layers=layers, total_steps=steps)


def _bounds(schedule):
    return [(s.first_step, s.last_step) for s in schedule.stages]


def _reject(block, *, layers=12, steps=100) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _build(block, layers=layers, steps=steps)
    message = str(info.value)
    assert "\n" not in message and message.startswith(info.value.key + ": "), message
    return info.value


def _check_contiguous(schedule):
    """Stages tile steps 1..N with no gap, no overlap and no empty stage."""
    assert schedule.stages[0].first_step == 1
    assert schedule.stages[-1].last_step == schedule.total_steps
    for i, stage in enumerate(schedule.stages):
        assert stage.index == i
        assert stage.num_steps >= 1, stage
        if i:
            assert stage.first_step == schedule.stages[i - 1].last_step + 1
    assert sum(s.num_steps for s in schedule.stages) == schedule.total_steps
    assert schedule.stages[-1].is_full


# ---------------------------------------------------------------- the paper's schedule


def test_6_8_10_12_keep_probabilities_and_depths():
    schedule = _build({"schedule": "6-8-10-12"})
    assert [s.keep_prob for s in schedule.stages] == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert [s.expected_layers for s in schedule.stages] == pytest.approx([6, 8, 10, 12])
    assert [s.name for s in schedule.stages] == ["stage1", "stage2", "stage3", "stage4"]
    assert all(s.fixed == (0, 11) and s.num_layers == 12 for s in schedule.stages)
    assert [s.is_full for s in schedule.stages] == [False, False, False, True]
    assert all(s.exact_layers is None for s in schedule.stages)
    assert (schedule.num_layers, schedule.total_steps) == (12, 100)
    assert (schedule.sampling, schedule.scaling) == ("bernoulli", "none")


def test_equal_stages_when_steps_divide():
    schedule = _build({"schedule": "6-8-10-12"}, steps=100)
    assert _bounds(schedule) == [(1, 25), (26, 50), (51, 75), (76, 100)]
    _check_contiguous(schedule)


@pytest.mark.parametrize("steps, bounds", [
    (10, [(1, 2), (3, 5), (6, 8), (9, 10)]),
    (101, [(1, 25), (26, 50), (51, 76), (77, 101)]),
    (7, [(1, 2), (3, 4), (5, 5), (6, 7)]),
    (4, [(1, 1), (2, 2), (3, 3), (4, 4)]),
])
def test_nearly_equal_stages_when_steps_do_not_divide(steps, bounds):
    # Pinned: the boundaries decide the masks, so a change here breaks resuming old runs.
    schedule = _build({"schedule": "6-8-10-12"}, steps=steps)
    assert _bounds(schedule) == bounds
    _check_contiguous(schedule)


@pytest.mark.parametrize("steps", list(range(4, 60)) + [997, 1000, 1001, 1002, 1003])
def test_equal_stage_lengths_differ_by_at_most_one(steps):
    schedule = _build({"schedule": "6-8-10-12"}, steps=steps)
    _check_contiguous(schedule)
    lengths = [s.num_steps for s in schedule.stages]
    assert set(lengths) <= {steps // 4, -(-steps // 4)}


def test_disabled_config_is_a_single_full_stage():
    for block in (None, {}, {"enabled": False, "schedule": "6-8-10-12"}):
        schedule = build_schedule(parse_raptr_block(block), num_layers=12, total_steps=50)
        assert len(schedule.stages) == 1
        (stage,) = schedule.stages
        assert (stage.first_step, stage.last_step, stage.keep_prob) == (1, 50, 1.0)
        assert stage.is_full and stage.expected_layers == 12
        assert schedule.expected_flops_fraction() == 1.0
        assert schedule == full_schedule(12, 50)


# ---------------------------------------------------------------- warmup and explicit lengths


def test_full_model_warmup_comes_first_and_stages_share_the_rest():
    schedule = _build({"schedule": "6-8-10-12", "full_model_warmup_steps": 20}, steps=100)
    assert [s.name for s in schedule.stages] == ["warmup", "stage1", "stage2", "stage3", "stage4"]
    assert _bounds(schedule) == [(1, 20), (21, 40), (41, 60), (61, 80), (81, 100)]
    assert schedule.stages[0].is_full and schedule.stages[0].keep_prob == 1.0
    assert [s.keep_prob for s in schedule.stages[1:]] == pytest.approx([0.4, 0.6, 0.8, 1.0])
    _check_contiguous(schedule)


def test_fractions_are_of_the_staged_part_after_warmup():
    schedule = _build({"schedule": [{"layers": 6, "fraction": 0.5},
                                    {"layers": 12, "fraction": 0.5}],
                       "full_model_warmup_steps": 40}, steps=100)
    assert _bounds(schedule) == [(1, 40), (41, 70), (71, 100)]


def test_warmup_with_exact_sampling_runs_every_layer():
    schedule = _build({"schedule": "6-12", "sampling": "exact", "full_model_warmup_steps": 5},
                      steps=20)
    assert schedule.stages[0].exact_layers == 12
    assert [s.exact_layers for s in schedule.stages] == [12, 6, 12]


def test_explicit_steps():
    schedule = _build({"schedule": [{"layers": 6, "steps": 10}, {"layers": 8, "steps": 30},
                                    {"layers": 12, "steps": 60}]}, steps=100)
    assert _bounds(schedule) == [(1, 10), (11, 40), (41, 100)]


def test_explicit_fractions():
    schedule = _build({"schedule": [{"layers": 6, "fraction": 0.1}, {"layers": 8, "fraction": 0.3},
                                    {"layers": 12, "fraction": 0.6}]}, steps=200)
    assert _bounds(schedule) == [(1, 20), (21, 80), (81, 200)]


def test_fractions_split_the_run_by_rounding_running_sums():
    schedule = _build({"schedule": [{"layers": 6, "fraction": 1 / 3},
                                    {"layers": 8, "fraction": 1 / 3},
                                    {"layers": 12, "fraction": 1 / 3}]}, steps=10)
    # boundaries at round(10/3)=3 and round(20/3)=7, the same rule as unspecified stages
    assert _bounds(schedule) == [(1, 3), (4, 7), (8, 10)]
    quarters = _build({"schedule": [{"layers": d, "fraction": 0.25} for d in (6, 8, 10, 12)]},
                      steps=10)
    string = _build({"schedule": "6-8-10-12"}, steps=10)
    assert [s.num_steps for s in quarters.stages] == [s.num_steps for s in string.stages]


def test_fractions_that_do_not_cover_the_run_are_rejected_at_any_length():
    for steps in (4, 100):
        with pytest.raises(ConfigError, match="add up to"):
            _build({"schedule": [{"layers": 6, "fraction": .25},
                                 {"layers": 12, "fraction": .25}]}, steps=steps)


def test_unspecified_stages_share_what_explicit_stages_leave():
    schedule = _build({"schedule": [{"layers": 6, "steps": 10}, {"layers": 8},
                                    {"layers": 10, "fraction": 0.3}, {"layers": 12}]}, steps=100)
    # 10 explicit steps + 30 from the fraction leave 60 for the two free stages.
    assert _bounds(schedule) == [(1, 10), (11, 40), (41, 70), (71, 100)]


def test_keep_prob_stages():
    schedule = _build({"schedule": [{"keep_prob": 0.25}, {"keep_prob": 0.5}, {"keep_prob": 1}]},
                      layers=10, steps=30)
    assert [s.keep_prob for s in schedule.stages] == [0.25, 0.5, 1.0]
    assert [s.expected_layers for s in schedule.stages] == pytest.approx([4, 6, 10])


def test_fixed_layers_are_resolved_and_deduplicated():
    schedule = _build({"schedule": "6-12", "fixed_layers": [-1, 0, 11, -12, 5]}, layers=12)
    assert schedule.stages[0].fixed == (0, 5, 11)
    # Depth 6 with 3 fixed layers of 12: p = (6 - 3) / 9.
    assert schedule.stages[0].keep_prob == pytest.approx(3 / 9)
    assert resolve_fixed_layers([], 4) == ()
    assert resolve_fixed_layers([-4, 3], 4) == (0, 3)


def test_no_fixed_layers():
    schedule = _build({"schedule": "3-12", "fixed_layers": []}, layers=12)
    assert schedule.stages[0].fixed == () and schedule.stages[0].keep_prob == pytest.approx(0.25)


def test_exact_sampling_stage_sizes():
    schedule = _build({"schedule": "6-8-10-12", "sampling": "exact"})
    assert [s.exact_layers for s in schedule.stages] == [6, 8, 10, 12]
    assert [s.expected_layers for s in schedule.stages] == [6.0, 8.0, 10.0, 12.0]
    assert schedule.sampling == "exact"
    # keep_prob given as a probability is fine for "exact" if it gives a whole depth.
    schedule = _build({"schedule": [{"keep_prob": 0.5}, {"keep_prob": 1}], "sampling": "exact"})
    assert schedule.stages[0].exact_layers == 7


@pytest.mark.parametrize("steps", range(1, 40))
def test_random_length_specs_always_tile_the_run(steps):
    # Whatever the mix of steps / fraction / unspecified: a ConfigError, or stages of at least
    # one step each that cover 1..N exactly.
    rng = random.Random(steps)
    built = rejected = 0
    for _ in range(60):
        n = rng.randint(1, 4)
        specs = []
        for i in range(n):
            spec = {"layers": 12 if i == n - 1 else 2 + i}
            kind = rng.choice(["free", "steps", "fraction"])
            if kind == "steps":
                spec["steps"] = rng.randint(1, 20)
            elif kind == "fraction":
                spec["fraction"] = rng.choice([0.05, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.9, 1.0])
            specs.append(spec)
        warmup = rng.choice([0, 0, 1, steps // 3])
        try:
            schedule = _build({"schedule": specs, "full_model_warmup_steps": warmup}, steps=steps)
        except ConfigError as err:
            assert err.key in ("raptr.schedule", "raptr.full_model_warmup_steps"), err
            rejected += 1
            continue
        _check_contiguous(schedule)
        assert len(schedule.stages) == n + (1 if warmup else 0)
        built += 1
    # both paths were taken, and enough schedules were built and checked: a builder that
    # rejected everything (or nothing) would fail here (measured: 4-34 of 60 built)
    assert built >= (15 if steps >= 10 else 4) and rejected >= 10, (built, rejected)


# ---------------------------------------------------------------- errors


def test_depth_above_the_model():
    err = _reject({"schedule": "6-8-10-14"}, layers=12)
    assert err.key == "raptr.schedule[3].layers"
    assert "14 layers is above the model's 12" in str(err)


def test_depth_below_the_fixed_layers():
    err = _reject({"schedule": "2-12", "fixed_layers": [0, 1, -1]}, layers=12)
    assert err.key == "raptr.schedule[0].layers"
    assert "below the 3 fixed layers" in str(err)


def test_shrinking_schedule():
    err = _reject({"schedule": "6-10-8-12"})
    assert err.key == "raptr.schedule[2]"
    assert "never shrinks" in str(err)


def test_last_stage_must_be_the_full_model():
    err = _reject({"schedule": "6-8-10"})
    assert err.key == "raptr.schedule[2]"
    assert "full model" in str(err)
    err = _reject({"schedule": [{"keep_prob": 0.5}, {"keep_prob": 0.99}]})
    assert err.key == "raptr.schedule[1]"


def test_lengths_not_summing_to_the_run():
    err = _reject({"schedule": [{"layers": 6, "steps": 10}, {"layers": 12, "steps": 10}]},
                  steps=100)
    assert err.key == "raptr.schedule"
    assert "add up to 20 steps" in str(err) and "100 steps" in str(err)


def test_fractions_that_do_not_cover_the_run():
    err = _reject({"schedule": [{"layers": 6, "fraction": 0.25}, {"layers": 12, "fraction": 0.25}]},
                  steps=100)
    assert err.key == "raptr.schedule"


def test_fraction_rounding_never_leaves_an_empty_last_stage():
    # 0.9 of 2 steps rounds to 2 and 0.1 to the minimum of 1: the last (full) stage would get
    # 0 steps if the rounding surplus were taken from it.
    err = _reject({"schedule": [{"layers": 6, "fraction": 0.9}, {"layers": 12, "fraction": 0.1}]},
                  steps=2)
    assert err.key == "raptr.schedule"


def test_too_few_steps_for_the_stages():
    err = _reject({"schedule": "6-8-10-12"}, steps=3)
    assert err.key == "raptr.schedule"
    assert "4 stages need at least one step each" in str(err)
    err = _reject({"schedule": [{"layers": 6, "steps": 99}, {"layers": 8}, {"layers": 12}]},
                  steps=100)
    assert err.key == "raptr.schedule"


@pytest.mark.parametrize("warmup", [100, 101])
def test_warmup_not_shorter_than_the_run(warmup):
    err = _reject({"schedule": "6-12", "full_model_warmup_steps": warmup}, steps=100)
    assert err.key == "raptr.full_model_warmup_steps"


@pytest.mark.parametrize("fixed, bad_index", [([0, 12], 1), ([-13], 0), ([0, -1, 100], 2)])
def test_fixed_layer_outside_the_model(fixed, bad_index):
    err = _reject({"schedule": "6-12", "fixed_layers": fixed}, layers=12)
    assert err.key == f"raptr.fixed_layers[{bad_index}]"
    assert "-12 to 11" in str(err)


def test_exact_sampling_needs_whole_depths():
    err = _reject({"schedule": "6-8.5-12", "sampling": "exact"})
    assert err.key == "raptr.schedule[1]"
    assert "8.5" in str(err)
    err = _reject({"schedule": [{"keep_prob": 0.45}, {"keep_prob": 1}], "sampling": "exact"})
    assert err.key == "raptr.schedule[0]"
    # The same non-integer depths are fine for Bernoulli sampling.
    assert _build({"schedule": "6-8.5-12"}).stages[1].keep_prob == pytest.approx(0.65)


def test_model_depth_and_run_length_must_be_positive():
    cfg = parse_raptr_block({"enabled": True, "schedule": "1"})
    with pytest.raises(ConfigError) as info:
        build_schedule(cfg, num_layers=0, total_steps=10)
    assert info.value.key == "model"
    with pytest.raises(ConfigError) as info:
        build_schedule(cfg, num_layers=4, total_steps=0)
    assert info.value.key == "train_steps"


# ---------------------------------------------------------------- stage_at


@pytest.mark.parametrize("steps, warmup", [(100, 0), (10, 0), (37, 5), (4, 0)])
def test_stage_at_every_step_matches_the_boundaries(steps, warmup):
    schedule = _build({"schedule": "6-8-10-12", "full_model_warmup_steps": warmup}, steps=steps)
    expected = {}
    for stage in schedule.stages:
        for step in range(stage.first_step, stage.last_step + 1):
            expected[step] = stage
    assert sorted(expected) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert schedule.stage_at(step) is expected[step]
    for step in (steps + 1, steps + 2, 10 * steps + 7):
        assert schedule.stage_at(step) is schedule.stages[-1]


def test_stage_at_is_one_based():
    schedule = _build({"schedule": "6-12"})
    with pytest.raises(ValueError):
        schedule.stage_at(0)
    with pytest.raises(ValueError):
        schedule.stage_at(-3)


# ---------------------------------------------------------------- expected FLOPs


def test_flops_fraction_of_6_8_10_12_is_three_quarters():
    schedule = _build({"schedule": "6-8-10-12"}, steps=1000)
    assert schedule.expected_flops_fraction() == pytest.approx(0.75, abs=1e-12)
    assert schedule.expected_flops_fraction(250) == pytest.approx(0.5, abs=1e-12)
    assert schedule.expected_flops_fraction(500) == pytest.approx(7 / 12, abs=1e-12)
    assert schedule.expected_flops_fraction(0) == 1.0


def _brute_force(schedule, upto):
    return sum(schedule.stage_at(s).expected_layers for s in range(1, upto + 1)) / (
        upto * schedule.num_layers)


@pytest.mark.parametrize("block, layers, steps", [
    ({"schedule": "6-8-10-12"}, 12, 10),
    ({"schedule": "6-8-10-12"}, 12, 1003),
    ({"schedule": "6-8-10-12", "full_model_warmup_steps": 17}, 12, 211),
    ({"schedule": [{"layers": 3, "steps": 5}, {"layers": 7.5}, {"layers": 9, "fraction": 0.6},
                   {"layers": 12}]}, 12, 97),
    ({"schedule": [{"keep_prob": 0.1, "steps": 3}, {"keep_prob": 1}], "fixed_layers": [1]}, 4, 13),
    ({"schedule": "2-3-4", "sampling": "exact", "fixed_layers": []}, 4, 29),
])
def test_flops_fraction_equals_brute_force_average(block, layers, steps):
    schedule = _build(block, layers=layers, steps=steps)
    for upto in sorted({1, 2, steps // 3, steps // 2, steps - 1, steps, steps + 1, 2 * steps}):
        if upto >= 1:
            assert schedule.expected_flops_fraction(upto) == pytest.approx(
                _brute_force(schedule, upto), rel=1e-12, abs=1e-12)
    assert schedule.expected_flops_fraction() == pytest.approx(_brute_force(schedule, steps),
                                                               rel=1e-12)


def test_describe_rows():
    rows = _build({"schedule": "6-8-10-12"}, steps=100).describe()
    assert rows[0] == {"stage": "stage1", "steps": "1-25", "keep_prob": 0.4,
                       "expected_layers": 6.0, "layer_flops": 0.5}
    assert rows[-1]["steps"] == "76-100" and rows[-1]["layer_flops"] == 1.0


# ---------------------------------------------------------------- fingerprint


BASE = {"schedule": "6-8-10-12"}


def _fingerprint(block=BASE, *, layers=12, steps=1000):
    return _build(block, layers=layers, steps=steps).fingerprint()


def test_fingerprint_is_pinned():
    # The fingerprint is stored in checkpoints and compared on resume: if this changes, runs
    # saved by an earlier version no longer resume. Change it only on purpose.
    assert _fingerprint() == _fingerprint()
    assert _fingerprint() == "3c24943c7b8a8892"


@pytest.mark.parametrize("block, layers, steps", [
    (BASE, 12, 1001),                                                     # total steps
    (BASE, 12, 999),
    (dict(BASE, sampling="exact"), 12, 1000),                             # sampling
    (dict(BASE, scaling="inverse_keep_prob"), 12, 1000),                  # scaling
    (dict(BASE, fixed_layers=[0]), 12, 1000),                             # fixed layers
    (dict(BASE, fixed_layers=[0, 1, -1]), 12, 1000),
    (dict(BASE, fixed_layers=[0, -2]), 12, 1000),
    (dict(BASE, full_model_warmup_steps=8), 12, 1000),                    # stage boundaries
    ({"schedule": [{"layers": 6, "steps": 249}, {"layers": 8, "steps": 251}, {"layers": 10},
                   {"layers": 12}]}, 12, 1000),
    ({"schedule": "6-8-10.5-12"}, 12, 1000),                              # a keep probability
    ({"schedule": "6-8-12"}, 12, 1000),                                   # the stages
    ({"schedule": "6-8-10-12-12"}, 12, 1000),
    ({"schedule": "6-8-10-13"}, 13, 1000),                                # the model's depth
])
def test_fingerprint_changes_with_anything_that_decides_masks(block, layers, steps):
    assert _fingerprint(block, layers=layers, steps=steps) != _fingerprint()


@pytest.mark.parametrize("block", [
    dict(BASE, seed=123),                    # the seed is checked separately
    dict(BASE, skipped_layers="momentum"),   # optimizer semantics, not the masks
    dict(BASE, consistency_check_interval=1),
    dict(BASE, full_model_warmup_steps=0),
    dict(BASE, fixed_layers=[11, 0, -1, -12]),
    {"schedule": [{"keep_prob": 0.4}, {"keep_prob": 0.6}, {"keep_prob": 0.8}, {"keep_prob": 1}]},
    {"schedule": [{"layers": 6, "fraction": 0.25}, {"layers": 8, "fraction": 0.25},
                  {"layers": 10, "steps": 250}, {"layers": 12}]},
    {"schedule": "6.0-8-10-12.0"},
])
def test_fingerprint_ignores_what_does_not_decide_masks(block):
    assert _fingerprint(block) == _fingerprint()


def test_stage_is_a_frozen_value():
    stage = Stage(0, "stage1", 1, 10, 0.5, 4, (0, 3))
    assert stage.num_steps == 10 and stage.expected_layers == 3.0 and not stage.is_full
    with pytest.raises(Exception):
        stage.keep_prob = 1.0
