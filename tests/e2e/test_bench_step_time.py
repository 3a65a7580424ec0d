"""The step-time benchmark on CPU: it runs, one process and two, and writes sane JSON.

Timings on a shared CPU say nothing here; only the shape of the result is checked. Bad input
exits 2 with one line before anything is built.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support import cpu_env, run, torchrun

TINY = ["--model", "bert", "--size", "tiny", "--precision", "fp32", "--device", "cpu",
        "--ks", "0,2,4", "--steps", "2", "--warmup", "1", "--micro-batch", "4", "--seq-len", "32"]


def bench(*args: str) -> list:
    return ["-m", "megaraptr.bench.step_time", *TINY, *args]


def check_result(path: Path, zero_stages: list, world_size: int) -> dict:
    result = json.loads(path.read_text())
    assert result["world_size"] == world_size
    assert result["ks"] == [0, 2, 4] and result["num_layers"] == 4
    assert set(result["paths"]) == {"plain"} | {f"zero{z}" for z in zero_stages}
    for name, entry in result["paths"].items():
        assert "error" not in entry, (name, entry.get("error"))
        assert set(entry["per_k"]) == {"0", "2", "4"}, name
        for k, row in entry["per_k"].items():
            assert len(row["samples_ms"]) == 2 and all(t > 0 for t in row["samples_ms"])
            assert 0 < row["min_ms"] <= row["median_ms"]
            assert row["speedup"] > 0 and row["ideal_speedup"] > 0
            ratio = row["speedup"] / row["ideal_speedup"]
            assert row["achieved_over_ideal"] == pytest.approx(ratio)
            if name != "plain":
                assert row["vs_plain"] == row["median_ms"] / \
                    result["paths"]["plain"]["per_k"][k]["median_ms"]
        assert entry["per_k"]["4"]["speedup"] == 1.0
        # both ends of the path's own line: achieved and ideal coincide there
        assert entry["per_k"]["4"]["achieved_over_ideal"] == 1.0
        assert entry["per_k"]["0"]["achieved_over_ideal"] == 1.0
        assert set(entry["fit"]) >= {"fixed_ms", "per_layer_ms"}
        assert "efficiency" not in entry["per_k"]["2"]  # retired: a slower path could win it
    for z in zero_stages:
        versus = result["paths"][f"zero{z}"]["vs_plain"]
        plain, path = result["paths"]["plain"]["fit"], result["paths"][f"zero{z}"]["fit"]
        assert versus["fixed_diff_ms"] == path["fixed_ms"] - plain["fixed_ms"]
    return result


def test_one_process_three_zero_stages(tmp_path):
    out = tmp_path / "bench.json"
    proc = run([sys.executable, *bench("--zero", "0", "--zero", "2,3", "--out", str(out))],
               timeout=150, env=cpu_env())
    check_result(out, [0, 2, 3], world_size=1)
    lines = proc.stdout.strip().splitlines()
    assert lines[-4].startswith("k | plain ms") and lines[-1].startswith("4 |")  # table last


def test_two_processes_zero2(tmp_path):
    out = tmp_path / "bench.json"
    torchrun(2, bench("--zero", "2", "--out", str(out)), timeout=150, env=cpu_env())
    check_result(out, [2], world_size=2)


def test_bad_k_exits_2_with_one_line(tmp_path):
    proc = run([sys.executable, *bench("--ks", "0,5", "--out", str(tmp_path / "x.json"))],
               timeout=60, env=cpu_env(), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ks: 5 is outside 0..4" in lines[0], proc.stderr
    assert not (tmp_path / "x.json").exists()
