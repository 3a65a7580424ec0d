"""The pipeline step-time benchmark (megaraptr.bench.pipeline) runs end to end on CPU.

Two processes, tiny GPT, two timed steps per schedule stage: both samplers train the same
schedule; the table has a row per stage and the whole schedule; every timed step records
a positive time and the cost model's prediction; the masks of the balanced engine give the
two pipeline stages active-layer counts at most one apart.
"""
from __future__ import annotations

import json

import pytest
from support import cpu_env, torchrun


@pytest.mark.distributed
def test_pipeline_benchmark_runs_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    proc = torchrun(2, ["-m", "megaraptr.bench.pipeline", "--model", "gpt", "--size", "tiny",
                        "--seq-len", "32", "--micro-batch", "2", "--micro-batches", "4",
                        "--schedule", "2-3-4", "--steps-per-stage", "3", "--warmup", "1",
                        "--out", str(out)], timeout=300, env=cpu_env(MEGARAPTR_CACHE=tmp_path))
    assert "| whole schedule |" in proc.stdout
    result = json.loads(out.read_text())
    assert [row["stage"] for row in result["stages"]] == ["stage1", "stage2", "stage3"]
    for name in ("bernoulli", "balanced"):
        steps = result["steps"][name]
        assert [s["step"] for s in steps] == [2, 3, 5, 6, 8, 9]
        assert all(s["seconds"] > 0 and s["predicted"] > 0 for s in steps)
    parts = result["stages"][0]["partition"]
    for step in result["steps"]["balanced"]:
        counts = [step["mask"][a:b].count("#") for a, b in zip(parts[:-1], parts[1:])]
        assert max(counts) - min(counts) <= 1
    assert result["stages"][-1]["predicted_ratio"] == pytest.approx(1.0)
