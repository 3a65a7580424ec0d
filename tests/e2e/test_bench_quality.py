"""The quality benchmark (python -m megaraptr.bench.quality): a small sweep end to end (runs,
report, PNG, TensorBoard), resuming a sweep, interpolation and the LR-tied stage lengths."""
from __future__ import annotations

import json
import sys

import pytest
from support import run, small_corpus

from megaraptr.data import SAMPLE_DIR


def bench(out, *extra, check=True):
    return run([sys.executable, "-m", "megaraptr.bench.quality", "--out", out, "--size", "tiny",
                "--steps", "6", "--evals", "2", "--eval-sequences", "8", "--micro-batch", "4",
                "--seq-len", "32", "--checkpoints", "2", *extra], timeout=600, check=check)


def test_bad_input_exits_2_with_one_line(tmp_path):
    proc = bench(tmp_path / "out", "--methods", "full,bogus", check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("megaraptr-bench-quality: error: --methods: unknown method 'bogus'; "
                           "allowed: full, full-matched, full-wall, raptr, pld, layerdrop, stacking or an "
                           "ablation (raptr-long-full-stage, ")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    first = bench(out, "--methods", "full,raptr,stacking", "--parallel", "2")
    return out, first


def test_sweep_writes_runs_report_plot_and_tensorboard(sweep):
    out, proc = sweep
    assert "[3/3]" in proc.stdout
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("h")]
    for method in ("full", "raptr", "stacking"):
        summary = json.loads((run_dir / method / "summary.json").read_text())
        assert summary["finished"] and summary["steps"] == 6
        assert [row[0] for row in summary["eval_clock"]] == [0, 3, 6]
        assert (out / "tensorboard" / f"{run_dir.name}-{method}").is_dir()
    report = (out / "report.md").read_text()
    for method in ("full", "raptr", "stacking"):
        assert f"| {method} | 6 |" in report
    assert "**Equal steps**" in report and "| total FLOPs |" in report
    png = out / f"quality_{run_dir.name}.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sweep_skips_finished_runs_and_resumes_interrupted_ones(sweep):
    out, _ = sweep
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("h")]
    before = json.loads((run_dir / "raptr" / "summary.json").read_text())
    (run_dir / "raptr" / "summary.json").unlink()  # as if killed after its last checkpoint
    proc = bench(out, "--methods", "full,raptr,stacking")
    assert "2 already finished, 1 to train" in proc.stdout
    after = json.loads((run_dir / "raptr" / "summary.json").read_text())
    assert after["resumed_from"] and after["final_eval_loss"] == before["final_eval_loss"]
    assert after["subnetwork_digest"] == before["subnetwork_digest"]


def test_held_out_source_extra_eval_text_and_the_wall_clock_matched_run(tmp_path):
    out = tmp_path / "out"
    proc = bench(out, "--methods", "full,raptr,full-wall", "--data",
                 small_corpus(tmp_path / "corpus"), "--holdout-source", "moby",
                 "--eval-data", f"sample={SAMPLE_DIR / 'val.jsonl.gz'}")
    assert "[2/2]" in proc.stdout and "[1/1] h" in proc.stdout  # full-wall: a second phase
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("h")]
    wall = json.loads((run_dir / "full-wall" / "wall.json").read_text())
    full, raptr, matched = (json.loads((run_dir / m / "summary.json").read_text())
                            for m in ("full", "raptr", "full-wall"))
    assert wall["ratio"] == raptr["wall_seconds"] / full["wall_seconds"]
    assert matched["steps"] == max(1, round(6 * wall["ratio"]))
    for s in (full, raptr, matched):
        assert set(s["final_extra_eval_loss"]) == {"moby", "sample"}
        assert [row[0] for row in s["extra_eval_history"]["moby"]][0] == 0
    report = (out / "report.md").read_text()
    assert "| val loss | vs full | moby loss | vs full | sample loss | vs full |" in report
    assert "**Equal wall-clock**" in report and "## Final moby loss by horizon" in report
    assert "`moby` (a corpus source left out of training" in report
    proc = bench(out, "--methods", "full", "--eval-data", f"val={SAMPLE_DIR}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "megaraptr-bench-quality: error: --eval-data: the column name 'val' is taken; allowed: "
        "NAME=PATH with another NAME")
