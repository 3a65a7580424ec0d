"""The quality benchmark (python -m megaraptr.bench.quality): a small sweep end to end (runs,
report, PNG, TensorBoard), resuming a sweep, interpolation and the LR-tied stage lengths."""
from __future__ import annotations

import sys

import pytest
from support import run

from megaraptr.bench.methods import lr_curve, lr_tied_fractions, raptr_depths, stacking_depths
from megaraptr.bench.report import interpolate


def bench(out, *extra, check=True):
    return run([sys.executable, "-m", "megaraptr.bench.quality", "--out", out, "--size", "tiny",
                "--steps", "6", "--evals", "2", "--eval-sequences", "8", "--micro-batch", "4",
                "--seq-len", "32", "--checkpoints", "2", *extra], timeout=600, check=check)


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


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    first = bench(out, "--methods", "full,raptr,stacking", "--parallel", "2")
    return out, first


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
