"""The quality benchmark's pure parts: the methods' depths and blocks, the LR-tied stage
lengths, the plan (FLOP-matched runs, bf16 and kernels in every config), interpolation and
which runs each comparison of the report sets side by side."""
from __future__ import annotations

import pytest

from megaraptr.bench.methods import lr_curve, lr_tied_fractions, raptr_depths, stacking_depths
from megaraptr.bench.report import interpolate


def test_depths_of_the_compared_methods():
    assert raptr_depths(12) == [6, 8, 10, 12]
    assert stacking_depths(12) == [6, 9, 12]


def test_interpolation_reads_between_points():
    curve = [(0.0, 10.0), (2.0, 6.0), (4.0, 5.0)]
    assert interpolate(curve, 1.0) == pytest.approx(8.0)
    assert interpolate(curve, 4.0) == 5.0
    assert interpolate(curve, 5.0) is None


def test_lr_tied_stages_have_equal_lr_sums():
    fractions = lr_tied_fractions(1000, 4, 0.05, 0.1)
    assert sum(fractions) == pytest.approx(1.0)
    assert fractions[0] < fractions[-1]  # early steps have the larger learning rates
    curve, bounds = lr_curve(1000, 0.05, 0.1), [0]
    for f in fractions:
        bounds.append(bounds[-1] + round(f * 1000))
    sums = [sum(curve[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert max(sums) / min(sums) < 1.02


def test_every_method_and_ablation_is_a_valid_block_changing_one_thing():
    from types import SimpleNamespace

    from megaraptr.bench.methods import ABLATIONS, METHODS
    from megaraptr.methods import build_schedule, parse_raptr_block

    args = SimpleNamespace(warmup=0.05)
    base = METHODS["raptr"](12, 3313)
    for name, block_of in list(METHODS.items()) + [
            (a, lambda L, N, fn=fn: fn(L, N, args)) for a, fn in ABLATIONS.items()]:
        block = block_of(12, 3313)
        schedule = build_schedule(parse_raptr_block(block), num_layers=12, total_steps=3313)
        assert 0.7 <= schedule.expected_flops_fraction() <= 1.0, name
        if name in ABLATIONS:
            changed = {k for k in set(block) | set(base) if block.get(k) != base.get(k)}
            assert len(changed) == 1, (name, changed)


def _args(tmp_path, **kw):
    from types import SimpleNamespace

    base = dict(out=str(tmp_path), model="gpt", size="narrow", micro_batch=16, seq_len=128,
                vocab_size=2048, lr=2e-3, warmup=0.05, horizons=[20.0], steps=None,
                methods=["full", "full-matched", "raptr", "pld", "layerdrop", "stacking",
                         "full-wall"], ablations=False, evals=20, checkpoints=4,
                precision="fp32", kernels="eager", seed=1234, device="cpu")
    return SimpleNamespace(**dict(base, **kw))


def test_plan_matches_total_flops_and_raptr_layer_flops(tmp_path):
    from megaraptr.bench.methods import plan_runs, plan_wall_runs

    runs = {r.name: r for r in plan_runs(_args(tmp_path), "data")}
    assert "full-wall" not in runs  # planned once full and raptr have a measured wall-clock
    assert runs["full"].steps == runs["raptr"].steps == 3313
    # total FLOPs (head included) of 6-8-10-12 on gpt-narrow: 0.7926, not the layers' 0.75
    assert runs["full-matched"].steps == round(3313 * 0.79256) == 2626
    assert runs["pld"].config["raptr"]["pld"] == {"match_flops": 0.75}
    assert runs["layerdrop"].config["raptr"]["layerdrop"] == {"match_flops": 0.75}
    sched = runs["full-matched"].config["scheduler"]["params"]
    assert sched["total_num_steps"] == 2626 and sched["warmup_num_steps"] == 131  # its own
    assert plan_wall_runs(_args(tmp_path), list(runs.values())) == []  # nothing measured yet


def test_bf16_and_kernels_reach_every_config(tmp_path):
    from megaraptr.bench.methods import plan_runs

    for run in plan_runs(_args(tmp_path, precision="bf16", kernels="auto"), "data"):
        assert run.config["bf16"] == {"enabled": True}
        assert run.config["zero_optimization"] == {"stage": 1}  # not ZeRO-0's bf16 wrapper
        assert run.config["raptr"]["kernels"] == "auto"


def _row(method, steps, val, flops, wall, moby=None):
    return {"method": method, "steps": steps, "val": val, "extra": {"moby": moby or val + 1},
            "layer_flops": flops, "flops": flops, "wall": wall, "equal_steps": steps == 100,
            "curves": {}}


def test_comparisons_set_side_by_side_only_runs_of_the_same_budget():
    from megaraptr.bench.report import comparisons

    rows = [_row("full", 100, 4.0, 1.0, 100), _row("full-matched", 79, 4.2, 0.79, 79),
            _row("raptr", 100, 4.1, 0.792, 84), _row("stacking", 100, 4.05, 0.79, 80),
            _row("raptr-long", 100, 4.0, 0.85, 90), _row("full-wall", 84, 4.15, 0.84, 83)]
    text = "\n".join(comparisons(rows, ["moby"], {"ratio": 0.84, "raptr_seconds": 84,
                                                  "full_seconds": 100}))
    steps, flops, wall = text.split("**Equal")[1:]
    assert "| full-matched |" not in steps and "| full-wall |" not in steps
    assert "| raptr | 100 | 0.792 | 0.792 | 84.0 | 4.1000 | +0.1000 | 5.1000 | +0.1000 |" in steps
    assert "| raptr | 100 | 0.792 | 0.792 | 84.0 | 4.1000 | -0.1000 | 5.1000 | -0.1000 |" in flops
    assert "| raptr-long |" not in flops and "Not FLOP-matched (total FLOPs): raptr-long (0.850)" \
        in flops
    assert "| raptr |" in wall and "| stacking |" in wall and "| raptr-long |" not in wall
    assert "raptr's 84 s / full's 100 s" in wall


def test_seed_table_gaps_are_taken_within_each_seed():
    from megaraptr.bench.seeds import seed_table

    def run(val, moby):
        return {"final_eval_loss": val, "final_extra_eval_loss": {"moby": moby},
                "layer_flops_vs_full": 0.75}

    one = {"h5/full": run(5.0, 6.0), "h5/raptr": run(5.1, 6.3), "h5/idea": run(4.9, 6.0)}
    two = {"h5/full": run(5.2, 6.2), "h5/raptr": run(5.2, 6.3)}
    lines = seed_table([one, two], seeds=["1234", "2"])
    raptr = [c.strip() for c in lines[3].strip("|").split("|")]
    assert lines[0].startswith("| run | layer FLOPs | val: seed 1234, seed 2 |")
    assert raptr[:3] == ["h5/raptr", "0.750", "5.1000, 5.2000"]
    assert raptr[3:5] == ["5.1500", "+0.0500 (+0.0000 to +0.1000)"]
    assert raptr[5:8] == ["6.3000, 6.3000", "6.3000", "+0.2000 (+0.1000 to +0.3000)"]
    assert len(lines) == 6 and lines[-1] == "In only some sweeps (no row): h5/idea."
