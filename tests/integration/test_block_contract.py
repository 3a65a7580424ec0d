"""The block contract on real one-process DeepSpeed engines started by megaraptr.initialize
itself (no launcher): a correct own block trains; a marked block whose forward is not
skippable is refused in one line before DeepSpeed builds anything; a skipped block whose
forward runs anyway stops the first step that skips layers (tests/workers/contract_worker.py)."""
from __future__ import annotations

import json
import sys

import pytest
from support import WORKERS, cpu_env, run


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "contract.json"
    run([sys.executable, WORKERS / "contract_worker.py", out], timeout=300, env=cpu_env())
    return json.loads(out.read_text())


def test_initialize_starts_a_process_group_and_a_correct_block_trains(contract):
    ok = contract["ok"]
    assert ok["stage"] == "done"
    assert ok["steps"] == [[True, False, False, True]] * 2  # "2-4": stage 1 runs the fixed two
    assert ok["skips"] == [0, 2, 2, 0]  # each skipped block took its skip branch on each step


def test_an_undecorated_block_is_refused_before_anything_is_built(contract):
    bad = contract["undecorated"]
    assert bad["stage"] == "initialize" and not bad["process_group"]
    assert bad["error"].startswith("model: __main__.Block (layer 0) is marked with "
                                   "megaraptr.mark_block but its forward is not decorated with "
                                   "@megaraptr.skippable")
    assert "\n" not in bad["error"]


def test_a_block_whose_forward_runs_when_skipped_stops_the_first_skipping_step(contract):
    around = contract["around"]
    assert around["stage"] == "train" and around["steps"] == []
    assert around["error"] == ("model: __main__.Block (layer 1) was skipped on step 1 but its "
                               "forward ran anyway (its skip branch never ran): call the block "
                               "itself, whose forward is decorated with @megaraptr.skippable, "
                               "not another method")
