"""The DeepSpeed engine path on 2 processes (gloo, CPU): ZeRO 0/1/2/3, fp32/bf16, both
skipped-layer policies, identical subnetworks on all ranks, ZeRO-3 gathers and prefetch, and
the rank-mismatch stop.

One torchrun launch runs the whole matrix (tests/workers/dist_worker.py) to keep start-up cost low.
"""
from __future__ import annotations

import json

import pytest
from support import WORKERS, cpu_env, skip_without_fp16, torchrun

pytestmark = pytest.mark.distributed

# ZeRO 0 all-reduces full gradients; ZeRO 1/2/3 reduce-scatter them into flat partitions and
# compute the clipping norm from partition norms. The arithmetic is the same up to the
# order of float32 additions: about 1e-7 relative per step, observed <= 1e-6 over 32 Adam
# steps. 2e-5 leaves a 20x margin, while a missing or stale layer update moves the loss by
# more than 3e-4 (a stale ZeRO-3 gradient applied again: 7e-4).
FP32_RTOL = 2e-5
STAGES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix")
    torchrun(2, [WORKERS / "dist_worker.py", "matrix", out], timeout=420,
             env=cpu_env())
    return [json.loads((out / f"matrix.rank{r}.json").read_text()) for r in (0, 1)]


def losses(case):
    return [s["loss"] for s in case["steps"]]


def test_zero_stages_follow_one_fp32_trajectory(matrix):
    rank0 = matrix[0]
    for policy in ("freeze", "momentum"):
        base = losses(rank0[f"0-fp32-{policy}"])
        norms = [s["grad_norm"] for s in rank0[f"1-fp32-{policy}"]["steps"]]  # ZeRO-0 keeps none
        assert len(base) >= 30 and None not in norms
        for stage in STAGES[1:]:
            case = rank0[f"{stage}-fp32-{policy}"]
            assert losses(case) == pytest.approx(base, rel=FP32_RTOL), (stage, policy)
            # the clipping norm sees no stale ZeRO-3 gradient of a skipped layer
            assert [s["grad_norm"] for s in case["steps"]] == pytest.approx(norms, rel=FP32_RTOL)
            assert case["fast_norm"], (stage, policy)  # megaraptr's one-pass norm was used
            # and under freeze, megaraptr's step that skips frozen groups entirely
            assert case["fast_step"] == (policy == "freeze"), (stage, policy)
    # the two policies are really different updates once a skipped layer has momentum
    assert losses(rank0["0-fp32-freeze"]) != pytest.approx(losses(rank0["0-fp32-momentum"]),
                                                           rel=FP32_RTOL)


@pytest.mark.parametrize("stage, kind", [(3, "deepspeed"), (2, "torch")])
def test_activation_checkpointing_replays_the_same_subnetwork(matrix, stage, kind):
    plain, checkpointed = matrix[0][f"{stage}-fp32-freeze"], matrix[0][f"{stage}-fp32-freeze-ckpt"]
    # recomputation in backward runs the step's own subnetwork: the same trajectory (the
    # tied embedding's two gradient contributions may be summed in another order)
    assert losses(checkpointed) == pytest.approx(losses(plain), rel=FP32_RTOL), kind
    assert checkpointed["digest"] == plain["digest"]
    if stage == 3:  # the module trace with recomputation is learnt and installed too
        late = checkpointed["steps"][20:]
        assert all(s["invalidations"] == 0 and s["prefetched"] > 0 for s in late)
        for step in checkpointed["steps"]:
            active = {i for i, on in enumerate(step["active"]) if on}
            assert set(step["gathered_layers"]) == active, step["step"]


def test_training_reduces_loss_under_every_case(matrix):
    for name, case in matrix[0].items():
        assert losses(case)[-1] < losses(case)[0] - 0.5, name


def test_all_ranks_use_identical_subnetworks(matrix):
    for name in matrix[0]:
        keys0 = [s["key"] for s in matrix[0][name]["steps"]]
        keys1 = [s["key"] for s in matrix[1][name]["steps"]]
        assert keys0 == keys1, name
        assert matrix[0][name]["digest"] == matrix[1][name]["digest"]
    # the schedule really skipped layers: first stage runs only the two fixed layers
    first = matrix[0]["2-fp32-freeze"]["steps"][0]["active"]
    assert first == [True, False, False, True]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_freeze_leaves_skipped_layers_bit_identical(matrix, stage, dtype):
    for rank in (0, 1):
        skipped_seen = 0
        for step in matrix[rank][f"{stage}-{dtype}-freeze"]["steps"]:
            for layer, (on, same) in enumerate(zip(step["active"], step["unchanged"])):
                # weights, fp32 master, Adam moments and step count: frozen iff skipped
                assert same == (not on), (rank, step["step"], layer)
                skipped_seen += not on
        assert skipped_seen >= 10


@pytest.mark.parametrize("stage", STAGES)
def test_momentum_moves_skipped_layers(matrix, stage):
    for step in matrix[0][f"{stage}-fp32-momentum"]["steps"]:
        assert not any(step["unchanged"]), step["step"]


def test_skipped_blocks_execute_nothing(matrix):
    for name, case in matrix[0].items():
        for step in case["steps"]:
            for layer, on in enumerate(step["active"]):
                calls = [n for k, n in step["calls"].items()
                         if k.startswith(f"{layer}.") and not k.endswith(".drop")]
                # 2 micro-batches per step: each submodule of an active block runs twice;
                # activation checkpointing recomputes (torch's stops once it has what
                # backward needs, so the last submodule may not run again)
                if not on:
                    assert calls == [0] * 4, (name, step["step"], layer)
                elif name.endswith("-ckpt"):
                    assert min(calls) >= 2 and max(calls) == 4, (name, step["step"], layer)
                else:
                    assert calls == [2] * 4, (name, step["step"], layer)


def test_deepspeed_sees_the_optimizer_state_of_layers_frozen_at_first(matrix):
    # ZeRO-1/2 and the bf16 optimizer link per-parameter views of the Adam state after the
    # first step; layers 1 and 2 are skipped then, so megaraptr must have them linked later.
    for name, case in matrix[0].items():
        if name.startswith(("1-", "2-", "3-")):
            assert case["linked"] is True, name
        assert case["linked"] in (True, None), name  # None: ZeRO-0 keeps no such views


@pytest.mark.parametrize("case", ["3-fp32-freeze", "3-fp32-momentum", "3-bf16-freeze"])
def test_zero3_never_gathers_a_skipped_layer(matrix, case):
    for rank in (0, 1):
        for step in matrix[rank][case]["steps"]:
            active = {i for i, on in enumerate(step["active"]) if on}
            assert set(step["gathered_layers"]) == active, (rank, step["step"])


def test_zero3_prefetches_each_subnetwork_without_invalidating_its_trace(matrix):
    steps = matrix[0]["3-fp32-freeze"]["steps"]
    seen, learnt_at = set(), None
    for step in steps:
        seen |= {i for i, on in enumerate(step["active"]) if on}
        if len(seen) == 4:
            learnt_at = step["step"]
            break
    after = [s for s in steps if s["step"] > learnt_at]
    assert len(after) >= 15 and len({tuple(s["active"]) for s in after}) >= 3
    for step in after:  # every block's runs are known: each step runs on its installed trace
        assert step["invalidations"] == 0, step["step"]
        assert step["prefetched"] > 0, step["step"]


def test_layer_flops_fraction_counts_what_ran(matrix):
    case = matrix[0]["1-fp32-freeze"]
    ran = sum(sum(s["active"]) for s in case["steps"])
    assert case["flops"] == pytest.approx(ran / (len(case["steps"]) * 4))
    assert case["flops"] < 1.0


def test_rank_mismatch_stops_every_rank_before_the_first_update(tmp_path):
    torchrun(2, [WORKERS / "dist_worker.py", "mismatch", tmp_path], timeout=180,
             env=cpu_env())
    for rank in (0, 1):
        for stage in ("2", "3"):
            result = json.loads((tmp_path / f"mismatch.rank{rank}.json").read_text())[stage]
            assert result["applied_steps"] == 0
            assert "ranks disagree on the subnetwork of step 1" in result["error"]
            assert f"raptr seed {7 + rank}" in result["error"]
            assert "\n" not in result["error"]


def test_fp16_overflow_does_not_advance_the_schedule(tmp_path):
    skip_without_fp16()
    torchrun(2, [WORKERS / "dist_worker.py", "fp16_overflow", tmp_path], timeout=240,
             env=cpu_env())
    for stage in ("2", "3"):
        result = json.loads((tmp_path / "fp16_overflow.rank0.json").read_text())[stage]
        calls = result["calls"]
        skipped = [c for c in calls if not c["applied"]]
        assert skipped and result["skipped_steps"] == len(skipped), stage
        assert any(c["step"] > 14 for c in skipped), stage  # the forced overflows
        for before, after in zip(calls, calls[1:]):
            if not before["applied"]:  # the retry: same step, same subnetwork
                assert (after["step"], after["active"]) == (before["step"], before["active"])
                assert before["after"] == before["step"] - 1
        assert [c["step"] for c in calls if c["applied"]] == list(range(1, 21))
        # the digest covers exactly the applied steps' subnetworks
        assert result["digest"] == result["expected_digest"]
