"""The divergence guard (``raptr.on_nonfinite``) on 2 ranks under ZeRO 0, 2 and 3 (fp32) and
ZeRO 2 (bf16), with NaN injected into the loss (tests/workers/divergence_worker.py).

- "skip_step": a NaN on one rank only drops the update on both; the weights, fp32 masters and
  Adam state are bit-identical across the dropped steps; the clock, the LR schedule and the
  data move on (DeepSpeed's own skip is taken out of ``skipped_steps``); a run saved after a
  dropped step and resumed is bit-identical to the uninterrupted one, and so is its count of
  dropped steps in a row (the limit stops the resumed run at the same step, exit code 3).
- "stop": the step stops both ranks with one line naming it; the NaN update that ZeRO-0 fp32
  applied can never be saved (the save is refused, nothing written), while ZeRO-2/3 had
  skipped it (finite weights: the save goes through).
One torchrun launch runs every case.
"""
from __future__ import annotations

import json
import math

import pytest
from support import WORKERS, cpu_env, torchrun

pytestmark = pytest.mark.distributed
CASES = ("0-fp32", "2-fp32", "2-bf16", "3-fp32")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("divergence")
    torchrun(2, [WORKERS / "divergence_worker.py", out], timeout=540, env=cpu_env())
    return [json.loads((out / f"divergence.rank{r}.json").read_text()) for r in (0, 1)]


def by_step(rows):
    return {row["step"]: row for row in rows}


@pytest.mark.parametrize("case", CASES)
def test_skip_step_drops_the_update_and_moves_on(ranks, case):
    for rank in ranks:
        ref, skip = by_step(rank["0-fp32"]["reference"]), by_step(rank[case]["skip"])
        assert sorted(skip) == list(range(1, 9))  # every step once: the clock passed each
        assert [skip[s]["dropped"] for s in skip] == [s in (3, 4) for s in skip]
        assert all(row["applied"] and row["skipped_steps"] == 0 for row in skip.values())
        assert skip[3]["hash"] == skip[4]["hash"] == skip[2]["hash"]  # nothing moved
        assert skip[2]["hash"] != skip[1]["hash"]  # (the hash sees an update)
        if case == "0-fp32":
            assert [skip[s]["hash"] for s in (1, 2)] == [ref[s]["hash"] for s in (1, 2)]
        assert skip[5]["hash"] != skip[4]["hash"]  # training goes on after the dropped steps
        assert math.isnan(skip[3]["loss"]) and math.isnan(skip[4]["loss"])  # rank 1's NaN
        assert all(math.isfinite(skip[s]["loss"]) for s in (1, 2, 5, 6, 7, 8))
        assert [skip[s]["lr"] for s in skip] == [ref[s]["lr"] for s in ref]  # LR moved on
        assert skip[8]["dropped_total"] == 2
    assert ranks[0][case]["skip_digest"] == ranks[1][case]["skip_digest"]


@pytest.mark.parametrize("case", CASES)
def test_resume_after_a_dropped_step_is_exact(ranks, case):
    for rank in ranks:
        record = rank[case]
        skip, resumed = by_step(record["skip"]), by_step(record["resumed"])
        assert sorted(resumed) == [4, 5, 6, 7, 8] and resumed[4]["dropped"]
        for step in resumed:
            for key in ("hash", "loss", "lr", "dropped"):
                a, b = resumed[step][key], skip[step][key]
                assert a == b or (key == "loss" and math.isnan(a) and math.isnan(b)), (step, key)
        assert record["resumed_digest"] == record["skip_digest"]
        assert record["limit"] == {"exit_code": 3, "error": (
            "step 5: non-finite training loss (nan) on 2 of 2 rank(s); 3 diverged steps in a "
            "row (raptr.max_consecutive_skips 2); stopped before anything of this step was "
            "saved")}


@pytest.mark.parametrize("case", CASES)
def test_stop_names_the_step_and_never_saves_nonfinite_weights(ranks, case):
    for rank in ranks:
        record = rank[case]
        assert record["stop"]["exit_code"] == 3
        assert record["stop"]["error"] == (
            "step 3: non-finite training loss (nan) on 1 of 2 rank(s); stopped before anything "
            'of this step was saved (raptr.on_nonfinite "stop")')
        if case == "0-fp32":  # DeepSpeed applied the NaN update there: the save is refused
            assert record["stop"]["applied_steps"] == 3
            assert record["stop_save"] == {"exit_code": 3, "written": False, "error":
                                           "step 3: non-finite weights; checkpoint after not "
                                           "written"}
        else:  # ZeRO-2/3 and bf16 skipped it (invalid norm): the weights are step 2's
            assert record["stop"]["applied_steps"] == 2
            assert record["stop_save"] == {"error": None, "written": True}
