"""megaraptr's ZeRO-1/2 gradient reduction (megaraptr/runtime/zero/reduce.py) on 2 processes:
in every reduction setting DeepSpeed offers, the same trajectory as DeepSpeed's own reduction,
bit for bit, and a run resumed from a checkpoint equal to the uninterrupted one (one torchrun
launch: tests/workers/layer_reduce_worker.py).

Bit for bit, not within a tolerance: per element the same division and the same two-term sum
(DeepSpeed reduces each slice to its owner, megaraptr all-reduces the bucket: on 2 ranks both
add the same two numbers), the same views into the same partition, so the same norm and update.
"""
from __future__ import annotations

import json

import pytest
from support import WORKERS, cpu_env, torchrun

pytestmark = pytest.mark.distributed

CASES = ["default", "small-buckets", "no-reduce-scatter", "predivide", "not-contiguous"]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("reduce")
    torchrun(2, [WORKERS / "layer_reduce_worker.py", out], timeout=420, env=cpu_env())
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("case", CASES)
def test_layer_reduce_equals_deepspeeds_reduction_bit_for_bit(ranks, case):
    for rank in ranks:
        mine, own = rank[f"{case}-megaraptr"], rank[f"{case}-deepspeed"]
        assert mine["patch"] == "active"
        assert own["patch"].startswith(
            "fallback: DeepSpeedZeroOptimizer.average_tensor differs from DeepSpeed 0.19.8's")
        assert mine["losses"] == own["losses"] and mine["norms"] == own["norms"]
        assert mine["digest"] == own["digest"]
        assert mine["losses"][-1] < mine["losses"][0]  # it trained
    assert ranks[0][f"{case}-megaraptr"]["digest"] == ranks[1][f"{case}-megaraptr"]["digest"]


def test_resumed_run_equals_the_uninterrupted_one(ranks):
    for rank in ranks:
        straight, resumed = rank["default-megaraptr"], rank["resumed"]
        assert resumed["patch"] == "active"
        assert resumed["losses"] == straight["losses"] and resumed["norms"] == straight["norms"]
        assert resumed["digest"] == straight["digest"]
