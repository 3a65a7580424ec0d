"""Tests of the pipeline simulator (megaraptr.planning.simulate, megaraptr.tools.simulate).

Pure: numpy only, no DeepSpeed, no torch. The 1F1B examples are worked by hand in comments.
"""
import json
import time

import numpy as np
import pytest

from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.planning.balance import Costs
from megaraptr.planning.simulate import (active_layers, draws, make_schedule, pipeline_order,
                                         simulate, simulate_1f1b, stage_counts)
from megaraptr.tools.simulate import main


def test_pipeline_order_is_1f1b():
    order = pipeline_order(3, 4)
    assert len(order) == 2 * 3 * 4 and len(set(order)) == 24

    def ops(s):
        return ["FB"[not fwd] + str(m) for stage, fwd, m in order if stage == s]

    assert ops(0) == ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"]  # 2 warmup forwards
    assert ops(1) == ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]
    assert ops(2) == ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]
    # Every op comes after the op it waits for.
    seen = set()
    for s, fwd, m in order:
        dep = (s - 1, True, m) if fwd else (s + 1, False, m)
        assert not 0 <= dep[0] < 3 or dep in seen
        seen.add((s, fwd, m))


def test_two_stage_1f1b_by_hand():
    # M = 2, forward 1/3 and backward 2/3 of each stage's time.
    # Balanced (3, 3): F = 1, B = 2. Stage 0: F0 0-1, F1 1-2; stage 1: F0 1-2, B0 2-4;
    # stage 0 B0 4-6; stage 1 F1 4-5, B1 5-7; stage 0 B1 7-9: 9 = (M + S - 1) x 3.
    assert simulate_1f1b([[3.0, 3.0]], 2)[0] == pytest.approx(9.0)
    # (3, 6): stage 1 F = 2, B = 4. Stage 1: F0 1-3, B0 3-7, F1 7-9, B1 9-13; stage 0: B0
    # 7-9, B1 13-15: 15.
    assert simulate_1f1b([[3.0, 6.0]], 2)[0] == pytest.approx(15.0)
    # The same with 0.5 per hop: stage 1 F0 1.5-3.5, B0 3.5-7.5; stage 0 B0 8-10; stage 1
    # F1 7.5-9.5, B1 9.5-13.5; stage 0 B1 14-16.
    assert simulate_1f1b([[3.0, 6.0]], 2, p2p=0.5)[0] == pytest.approx(16.0)
    # Backward = forward (ratio 1): F = B = 1.5 on stage 0, 3 on stage 1. Stage 1: F0
    # 1.5-4.5, B0 4.5-7.5, F1 7.5-10.5, B1 10.5-13.5; stage 0 B1 13.5-15.
    assert simulate_1f1b([[3.0, 6.0]], 2, backward_ratio=1.0)[0] == pytest.approx(15.0)


def test_balanced_pipeline_is_m_plus_s_minus_1_stage_times():
    for stages, micro in ((1, 1), (2, 5), (4, 4), (8, 32), (5, 3)):
        times = np.full((2, stages), [[2.0], [3.5]])
        expected = [(micro + stages - 1) * 2.0, (micro + stages - 1) * 3.5]
        assert simulate_1f1b(times, micro) == pytest.approx(expected)


def test_rows_are_simulated_independently():
    rows = np.array([[3.0, 6.0], [3.0, 3.0], [3.0, 6.0], [1.0, 0.0]])
    batch = simulate_1f1b(rows, 2)
    assert batch == pytest.approx([simulate_1f1b(r, 2)[0] for r in rows])
    assert batch[:3] == pytest.approx([15.0, 9.0, 15.0])


@pytest.mark.parametrize("sampling", ["bernoulli", "exact", "balanced"])
def test_stage_counts_match_the_sampler(sampling):
    schedule = make_schedule(12, "4-6-8-10-12", 60, sampling, [0, -1])
    plan = [(0, 4, 8, 12), (0, 3, 8, 12), (0, 5, 9, 12), (0, 4, 8, 12), (0, 4, 8, 12)]
    active = None if sampling == "balanced" else active_layers(schedule, sampling,
                                                               draws(schedule, 17))
    counts = stage_counts(schedule, sampling, plan, 17, active)
    sampler = SubnetworkSampler(schedule, 17, plan)
    for step in range(1, 61):
        mask, parts = sampler.mask(step), plan[schedule.stage_at(step).index]
        assert list(counts[step - 1]) == [sum(mask.active[lo:hi])
                                          for lo, hi in zip(parts, parts[1:])], step


def test_perfectly_balanced_case_equals_the_ideal():
    # 8 layers on 4 stages, nothing fixed, keep 4 of 8: every stage runs exactly 1 layer.
    result = simulate(8, 4, 6, Costs(1.0), "4-8", 200, fixed_layers=[], seed=1)
    for row in result["rows"]:
        if row["sampling"] == "balanced":
            assert row["ratio_to_ideal"] == pytest.approx(1.0)
            assert row["mean_imbalance"] == pytest.approx(1.0)
        else:
            assert row["ratio_to_ideal"] > 1.0
        assert row["stages"][-1]["ratio_to_ideal"] == pytest.approx(1.0)  # the full model
    assert result["full_model"]["ratio_to_ideal"] == pytest.approx(1.0)
    assert result["full_model"]["step"] == pytest.approx(9 * 2.0)  # (M + S - 1) x 2 layers


def test_balanced_beats_bernoulli_and_meets_the_target():
    result = simulate(48, 8, 32, Costs(1.0), "24-32-40-48", 400)
    rows = {(r["sampling"], r["partition"]): r for r in result["rows"]}
    for mode in ("uniform", "static", "repartition"):
        balanced, bernoulli = rows["balanced", mode], rows["bernoulli", mode]
        assert balanced["mean_step"] <= bernoulli["mean_step"]
        assert balanced["mean_step"] <= rows["exact", mode]["mean_step"]
        assert balanced["ratio_to_ideal"] < 1.05
        assert balanced["ratio_to_ideal"] >= balanced["floor_to_ideal"] - 0.01
        for ours, theirs in zip(balanced["stages"], bernoulli["stages"]):
            assert ours["mean_step"] <= theirs["mean_step"] + 1e-9
    assert result["plans"]["repartition"][0] == [0, 5, 12, 18, 24, 30, 36, 43, 48]
    json.dumps(result)  # JSON-ready


def test_exact_is_skipped_when_depths_are_not_whole():
    result = simulate(12, 2, 4, Costs(1.0), "6.5-12", 20)
    assert "exact" in result["skipped"]
    assert {r["sampling"] for r in result["rows"]} == {"bernoulli", "balanced"}


def test_simulator_is_fast_for_96_layers_16_stages_64_micro_batches():
    start = time.perf_counter()
    result = simulate(96, 16, 64, Costs(1.0, 0.3, 3.0), "48-64-80-96", 3000)
    assert time.perf_counter() - start < 60.0  # about 2 s on one free core
    assert len(result["rows"]) == 9


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("argv", [
    ["--stages", "0"], ["--layers", "4", "--stages", "5"], ["--schedule", "abc"],
    ["--layer-cost", "0"], ["--fixed-layers", "99"], ["--fixed-layers", "a,b"],
    ["--steps", "2"], ["--micro-batches", "0"], ["--head-cost", "-1"], ["--bogus"],
    ["--schedule", "8-6"], ["--min-gain", "1"], ["--backward-ratio", "0"]])
def test_cli_rejects_bad_input_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("megaraptr-simulate: error: ") and err.count("\n") == 1, err


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "sim.json"
    argv = ["--layers", "12", "--stages", "3", "--micro-batches", "4", "--schedule", "6-12",
            "--steps", "50", "--head-cost", "2", "--p2p-cost", "0.1", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "bubble kept" in text and "| balanced  | repartition |" in text
    result = json.loads(out.read_text())
    assert result["config"]["p2p_cost"] == 0.1 and len(result["rows"]) == 9
    assert all(len(r["stages"]) == 2 for r in result["rows"])


def test_step_never_exceeds_m_plus_s_minus_1_busiest():
    # balance.predicted_step_time relies on it: the step is nondecreasing in the stage times.
    rng = np.random.default_rng(0)
    for stages, micro in ((2, 3), (4, 8), (8, 32)):
        times = rng.uniform(0.0, 5.0, size=(50, stages))
        steps = simulate_1f1b(times, micro)
        assert np.all(steps <= (micro + stages - 1) * times.max(axis=1) + 1e-9)
        assert np.all(steps >= times.sum(axis=1))  # one micro-batch crosses every stage
