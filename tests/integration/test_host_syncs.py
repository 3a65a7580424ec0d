"""What one engine step makes the host wait for, and what a skipped layer costs, counted.

tests/workers/host_sync_worker.py counts host syncs (a tensor read into Python, data-dependent
ops, device-to-host copies, synchronize calls) and aten ops of ``train_step`` alone, the loss
not read (megaraptr.bench.host_probe). These counts are exact on a CPU, where times are not.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
from support import ROOT, WORKERS, cpu_env, free_port, run


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    out = tmp_path_factory.mktemp("syncs") / "counts.json"
    env = cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                  PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]))
    run([sys.executable, WORKERS / "host_sync_worker.py", out], timeout=400, env=env)
    return json.loads(out.read_text())


def test_one_host_sync_per_step_and_one_more_where_deepspeed_checks_overflow(counted):
    for k in ("k=4", "k=2"):
        # megaraptr's wait: the step's one all-reduce (mean loss, non-finite count, stop votes),
        # read once after the optimizer step; the divergence guard and the agreed stop decide
        # on it. (A CPU tensor's tolist is not an aten op: the probe counts the calls.)
        assert counted[f"fp32 z0 {k}"]["tolist"] == counted[f"fp32 z0 {k}"]["syncs"] == 1
        for zero in (1, 2):
            for precision, items in (("fp32", 2), ("bf16", 2), ("bf16-unchecked", 1)):
                case = counted[f"{precision} z{zero} {k}"]
                # DeepSpeed skips a step whose norm is inf/NaN (fp32; bf16 unless unchecked):
                # its one host decision (before: its per-group unscale tested the norm once
                # per layer group, the throughput timer synchronized twice); the guard reads
                # the norm after the reduction's wait, when the device has nothing left to do
                assert (case["tolist"], case["item"], case["syncs"]) == (1, items, items + 1)


@pytest.mark.parametrize("zero", [1, 2])
def test_a_skipped_layer_costs_one_view_per_parameter_under_zero12(counted, zero):
    # a k = 2 step of the 4-layer model against the full step of a 2-layer model of the same
    # width: what the two skipped layers cost. Only DeepSpeed's count of the parameters that
    # take part in backward remains (once per backward it looks up each parameter's gradient
    # accumulator: one view op per parameter of the model); no gradient buffer, no norm, no
    # flatten, no optimizer, no all-gather (before: 24 ops per skipped layer, zeros included)
    for precision in ("fp32", "bf16"):
        half, shallow = counted[f"{precision} z{zero} k=2"], counted[f"{precision} z{zero} k=2 "
                                                                      "depth 2"]
        assert half["ops"] - shallow["ops"] == 2 * half["params_per_layer"], precision
    full = counted[f"fp32 z{zero} k=4"]["ops"]
    assert full > counted[f"fp32 z{zero} k=2"]["ops"] + 100  # while an active layer does
