"""RaptrEngine's explicit surface on real one-process DeepSpeed engines (ZeRO-2 and a one-stage
pipeline; tests/workers/surface_worker.py): DeepSpeed calls that would bypass the step's
subnetwork raise one line naming ``train_step``; ``engine(**batch)`` evaluates the full model,
in either mode; harmless DeepSpeed attributes still read through; ``kernels`` is the engine's
own."""
from __future__ import annotations

import json
import os
import sys

import pytest
from support import ROOT, WORKERS, cpu_env, free_port, run

BYPASS = ("step", "backward", "forward", "train_batch")


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    out = tmp_path_factory.mktemp("surface") / "surface.json"
    env = cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                  PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]))
    run([sys.executable, WORKERS / "surface_worker.py", out], timeout=300, env=env)
    return json.loads(out.read_text())


@pytest.mark.parametrize("path", ["zero", "pipeline"])
def test_bypassing_calls_raise_one_line_naming_train_step(surface, path):
    refusals = surface[path]["refusals"]
    owner = "RaptrEngine" if path == "zero" else "RaptrPipelineEngine"
    for name in BYPASS:
        if path == "pipeline" and name == "train_batch":  # the pipeline's own step, not DeepSpeed's
            assert refusals[name]["type"] is None
            continue
        refused = refusals[name]
        assert refused["type"] == "EngineUsageError", (name, refused)
        assert refused["message"].startswith(f"{owner}.{name}: not forwarded to DeepSpeed, it "
                                             "would bypass the step's subnetwork"), refused
        assert "engine.train_step(micro_batches)" in refused["message"]
        assert "\n" not in refused["message"] and refused["hasattr"] is False
    unknown = refusals["no_such_attribute"]
    assert unknown["type"] == "AttributeError" and "\n" not in unknown["message"]
    assert "engine.ds" in unknown["message"] and unknown["hasattr"] is False


def test_call_evaluates_the_full_model_in_eval_mode(surface):
    case = surface["zero"]["eval_mode"]
    assert case["call"] == case["full"]
    assert case["evaluate"] == pytest.approx(case["call"], rel=1e-6)
    assert case["training_after"] is False


def test_call_in_train_mode_evaluates_the_full_model_and_leaves_the_step_alone(surface):
    case = surface["zero"]["train_mode"]
    assert sum(case["active"]) == 2  # stage 1 trained 2 of the 4 layers
    assert case["call"] == case["full"]
    assert case["subnetwork"] != case["full"]  # the step's subnetwork is a different model
    assert case["requires_grad"] is False  # no backward can bypass train_step through it
    assert case["training_after"] is True
    assert case["mask_after"] == case["active"]


def test_harmless_deepspeed_attributes_read_through(surface):
    forwarded = surface["zero"]["forwarded"]
    assert forwarded["module"] and forwarded["optimizer"]
    assert forwarded["global_steps"] == forwarded["applied_steps"] == 1
    assert forwarded["device"] == "cpu"
    assert forwarded["micro_batch"] == 4 and forwarded["grad_accum"] == 1
    assert forwarded["zero_stage"] == 2 and forwarded["monitor_enabled"] is False


def test_kernels_is_the_engines_own(surface):
    assert surface["zero"]["kernels_own"]
    assert surface["zero"]["kernels"]["mode"] == "eager"


def test_pipeline_call_refuses_in_one_line(surface):
    case = surface["pipeline"]
    assert case["call"]["type"] == "EngineUsageError"
    assert case["call"]["message"].startswith("RaptrPipelineEngine(**batch): a pipeline runs")
    assert "engine.evaluate(batches)" in case["call"]["message"]
    assert case["seed"] == 11  # the run's seed: the raptr block gives none
