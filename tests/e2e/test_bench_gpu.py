"""The one-command GPU benchmark (megaraptr.bench.gpu) on CPU: its dry run end to end, its
time budget, and the carried data (a corpus slice, read without the tokenizers package).

Timings on a shared CPU say nothing; only the shape of the results is checked.
"""
from __future__ import annotations

import json
import sys

import pytest
from support import cpu_env, run


def test_dry_run_measures_every_part_and_prints_the_table_last(tmp_path, mlm, causal):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bert-mlm").symlink_to(mlm.path)
    (data / "gpt-causal").symlink_to(causal.path)
    out = tmp_path / "out"
    proc = run([sys.executable, "-m", "megaraptr.bench.gpu", "--dry-run", "--out", out,
                "--zero", "2", "--data-dir", data], timeout=240, env=cpu_env())
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("dry run on CPU, not the targets' setting; targets: "), lines
    summary = json.loads((out / "gpu_bench.json").read_text())
    assert {p: s["rc"] for p, s in summary["parts"].items()} == {"bert": 0, "e2e": 0, "host": 0,
                                                                  "gpt": 0}
    assert summary["host"]["table"].splitlines()[1].startswith("host ")  # ZeRO-1 / ZeRO-0 ...
    assert summary["kernel_check"]["ok"] is None  # the Triton kernel needs CUDA
    for part, shape in (("bert", "bert-tiny"), ("gpt", "gpt-tiny")):
        assert summary[part]["shape"] == shape and summary[part]["half"] == 2
        assert set(summary[part]["paths"]) == {"plain", "zero2"}
        for row in summary[part]["paths"].values():
            assert row["eager"]["resolved"] == "eager" and row["auto"]["resolved"] == "fused"
            assert row["auto"]["optimizer"] == "torch AdamW(fused=True)"
            assert row["auto"]["graphs_while_timed"] == 0
        zero2 = summary[part]["paths"]["zero2"]["auto"]
        assert zero2["per_layer_vs_plain"] is not None and zero2["half_over_ideal"] > 0
        assert "efficiency_half" not in zero2  # retired: a slower path could win it
    e2e = summary["e2e"]
    assert e2e["steps"] == 12 and e2e["schedule"] == "2-3-4" and e2e["kernels"] == "auto"
    assert 2 <= e2e["mean_active_layers"] < 4 and e2e["pairs"] == 3
    assert len(e2e["speedups"]) == 3 and e2e["speedup"]["min"] <= e2e["speedup"]["median"]
    # the ideal comes from this run's plain t(k): on a shared CPU a 12-step dry run's is noise
    assert e2e["ideal"] > 0 and e2e["graphs_compiled_in_loops"] == 0
    assert e2e["achieved_over_ideal"] == pytest.approx([s / e2e["ideal"] for s in e2e["speedups"]])
    assert any(k.startswith("e2e achieved/ideal >= 0.98 in 3 of 3 pairs")
               for k in summary["targets"])
    result = json.loads((out / "e2e.json").read_text())
    runs = result["runs"]  # every step time of every run, the order alternating per pair
    assert [(r["pair"], r["name"]) for r in runs] == [
        (0, "full"), (0, "raptr"), (1, "raptr"), (1, "full"), (2, "full"), (2, "raptr")]
    assert all(len(r["step_ms"]) == 12 for r in runs)
    assert all(r["active_layers"] == [4] * 12 for r in runs if r["name"] == "full")
    assert set(result["plain"]["samples_ms"]) == {"0", "2", "4"}  # the ideal's own plain t(k)


def test_parts_that_do_not_fit_the_budget_are_skipped(tmp_path):
    out = tmp_path / "out"
    proc = run([sys.executable, "-m", "megaraptr.bench.gpu", "--dry-run", "--out", out,
                "--budget", "5"], timeout=60, env=cpu_env(), check=False)
    assert proc.returncode == 1
    summary = json.loads((out / "gpu_bench.json").read_text())
    assert all(s["skipped"] == "time budget spent" for s in summary["parts"].values())
    assert "part gpt: time budget spent" in proc.stdout


READ_WITHOUT_TOKENIZERS = r"""
import sys
sys.modules["tokenizers"] = None  # import tokenizers now fails, as on the GPU machine
from megaraptr.data import make_batches, resolve_data
data = resolve_data(sys.argv[1], kind="mlm")
batch = make_batches(data, seq_len=32, micro_batch_size=2).step_batches(1)[0]
print("read", tuple(batch["input_ids"].shape))
"""


def test_prepared_data_reads_without_the_tokenizers_package(mlm):
    proc = run([sys.executable, "-c", READ_WITHOUT_TOKENIZERS, mlm.path], timeout=60,
               env=cpu_env())
    assert proc.stdout.strip().endswith("read (2, 32)")
