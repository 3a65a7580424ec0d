"""The host-overhead benchmark on CPU at a tiny size: every arm steps, the JSON holds every
sample, the breakdown and the counts, the table comes last; bad input is one line, exit 2.

Timings on a shared CPU say nothing here; the counts (aten ops, host syncs) are exact.
"""
from __future__ import annotations

import json
import sys

from support import cpu_env, run

TINY = ["--model", "gpt", "--size", "tiny", "--vocab-size", "128", "--seq-len", "8",
        "--steps", "3", "--warmup", "1", "--breakdown-steps", "2", "--zero", "0,1"]


def test_tiny_run_measures_every_arm(tmp_path):
    out = tmp_path / "host.json"
    proc = run([sys.executable, "-m", "megaraptr.bench.host_overhead", *TINY, "--out", out],
               timeout=400, env=cpu_env())
    result = json.loads(out.read_text())
    arms = result["arms"]
    assert set(arms) == {"plain k=0", "plain k=2", "plain k=4", "deepspeed z0", "deepspeed z1",
                         "megaraptr z0 k=0", "megaraptr z0 k=2", "megaraptr z0 k=4",
                         "megaraptr z1 k=0", "megaraptr z1 k=2", "megaraptr z1 k=4",
                         "megaraptr z0 depth 2", "megaraptr z1 depth 2"}
    for name, arm in arms.items():
        assert len(arm["samples_ms"]) == 3 and len(arm["cpu_ms"]) == 3, name
        assert all(t > 0 for t in arm["samples_ms"]), name
        assert len(arm["phases_ms"]) == 2 and arm["phases_ms"][0]["forward"] > 0, name
        assert arm["counts"]["ops"] > 0, name
    for name in ("deepspeed z1", "megaraptr z1 k=4"):  # ZeRO-1 phases were found and timed
        phases = arms[name]["phases_ms"][0]
        assert phases["optimizer"] > 0 and phases["norm"] > 0 and phases["backward"] > 0, name
    # fewer layers, fewer ops: plain PyTorch dispatches nothing for a skipped layer
    assert arms["plain k=0"]["counts"]["ops"] < arms["plain k=2"]["counts"]["ops"] < \
        arms["plain k=4"]["counts"]["ops"]
    analysis = result["analysis"]
    assert set(analysis["skipped_layer"]) == {"z0", "z1"}
    assert "megaraptr z1 k=4 / megaraptr z0 k=4" in analysis["ratios"]
    lines = proc.stdout.strip().splitlines()
    assert lines[-14].startswith("arm ") and lines[-1].startswith("megaraptr z1 depth 2 |")


def test_bad_zero_stage_is_one_line_exit_2(tmp_path):
    proc = run([sys.executable, "-m", "megaraptr.bench.host_overhead", "--zero", "3"],
               timeout=60, env=cpu_env(), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megaraptr-bench-host-overhead: error: --zero")
