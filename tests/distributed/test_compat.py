"""A DeepSpeed whose patched methods changed (megaraptr.runtime.compat), on 2 processes (gloo,
CPU): each patch with a fallback says so in one warning line and leaves the step to DeepSpeed's
own code, which trains the same trajectory with frozen layers still bit-identical; each patch
without one stops every rank with one line before training.

One torchrun launch runs every case (tests/workers/compat_worker.py); the changed sources are
simulated by changing megaraptr's recorded hashes before ``initialize``.
"""
from __future__ import annotations

import json

import pytest
from support import WORKERS, cpu_env, torchrun

pytestmark = pytest.mark.distributed

TRAIN_CASES = ["2-active", "2-fallback", "2-stepfallback", "3-active", "3-fallback",
               "3m-active", "3m-fallback"]
# The fallbacks that change arithmetic at all compute the clipping norm with DeepSpeed's own
# code: per-tensor float32 norms summed per group, against megaraptr's one fp64 sum. That is
# the same norm up to summation order (measured: 1.2e-7 relative), and the 16 Adam steps
# carry it into the loss at 6e-8 relative. 2e-6 leaves a 30x margin, while a fallback that
# got it wrong is far outside: with the stale ZeRO-3 gradients left in place (the zeroing
# disabled) this run's loss moved by 1.7e-4 relative and its clipping norm by 2.7e-3.
FALLBACK_RTOL = 2e-6
WARNED = {  # the one warning line of each changed method: "<method> ...): <patch> off, ..."
    "DeepSpeedZeroOptimizer.step": "zero12_frozen_step",
    "DeepSpeedZeroOptimizer.has_overflow": "zero12_layer_norm",
    "DeepSpeedZeroOptimizer._update_model_bit16_weights": "zero12_frozen_step",
    "DeepSpeedZeroOptimizer_Stage3._prepare_sub_group": "zero3_frozen_step",
    "PartitionedParameterCoordinator": "zero3_prefetch",  # changed in two cases, said once
    "DeepSpeedZeroOptimizer_Stage3._get_norm_groups": "zero3_layer_norm",
    "DeepSpeedZeroOptimizer_Stage3._get_fp32_grad_state_partition": "zero3_stale_grads",
    "BF16_Optimizer._lazy_init_hp_params_optimizer_state": "hp_state_relink",  # pipe bf16-z0
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("compat")
    proc = torchrun(2, [WORKERS / "compat_worker.py", out] + TRAIN_CASES + ["pipe"],
                    timeout=600, env=cpu_env())
    results = {case: [json.loads((out / f"{case}.rank{r}.json").read_text()) for r in (0, 1)]
               for case in TRAIN_CASES + ["pipe"]}
    return results, proc.stdout + proc.stderr


def losses(case):
    return [s["loss"] for s in case["steps"]]


def test_one_warning_line_per_changed_method_on_rank_zero_only(runs):
    _, output = runs
    lines = [line for line in output.splitlines() if line.startswith("megaraptr: warning:")]
    assert len(lines) == len(WARNED), lines  # not repeated by the other rank or a second case
    for method, patch in WARNED.items():
        said = [line for line in lines if line.startswith(f"megaraptr: warning: {method} differs")]
        assert len(said) == 1, method
        assert "megaraptr supports 0.19.8" in said[0] and f"): {patch} off, " in said[0]


@pytest.mark.parametrize("case, fallbacks", [
    # the epilogue patch relies on megaraptr's step and norm: off with either
    ("2-fallback", {"zero12_frozen_step", "zero12_layer_norm", "zero12_frozen_epilogue"}),
    ("2-stepfallback", {"zero12_frozen_step", "zero12_frozen_epilogue"}),
    ("3-fallback", {"zero3_frozen_step", "zero3_prefetch"}),
    ("3m-fallback", {"zero3_layer_norm", "zero3_stale_grads", "zero3_prefetch"})])
def test_engine_reports_each_patch_and_installs_only_active_ones(runs, case, fallbacks):
    results, _ = runs
    active = results[case.replace("fallback", "active").replace("step", "")][0]
    assert set(active["patches"].values()) == {"active"}
    for rank in results[case]:
        patches = rank["patches"]
        assert set(patches) == set(active["patches"])  # the same patches were considered
        assert {n for n, s in patches.items() if s.startswith("fallback: ")} == fallbacks
        assert {n for n, s in patches.items() if s == "active"} == set(patches) - fallbacks
        # what the engine installed follows the report
        assert rank["fast_step"] == (patches.get("zero12_frozen_step", patches.get(
            "zero3_frozen_step")) == "active" and "m-" not in case)
        assert rank["fast_norm"] == (patches.get("zero12_layer_norm", patches.get(
            "zero3_layer_norm")) == "active")
        if case.startswith("3"):
            assert rank["trace"] is False  # DeepSpeed's own trace
            assert rank["private_clear"] == (patches["zero3_stale_grads"] == "active")


@pytest.mark.parametrize("active, fallback", [("2-active", "2-stepfallback"),
                                              ("3-active", "3-fallback")])
def test_fallback_of_the_frozen_step_and_prefetch_is_bit_identical(runs, active, fallback):
    results, _ = runs
    # DeepSpeed's own step also visits frozen groups, but only to discard the work, and
    # prefetch moves no number: the very same losses and clipping norms
    assert losses(results[fallback][0]) == losses(results[active][0])
    assert [s["grad_norm"] for s in results[fallback][0]["steps"]] == \
        [s["grad_norm"] for s in results[active][0]["steps"]]


@pytest.mark.parametrize("active, fallback", [("2-active", "2-fallback"),
                                              ("3m-active", "3m-fallback")])
def test_fallback_of_the_norm_follows_the_same_trajectory(runs, active, fallback):
    results, _ = runs
    assert losses(results[fallback][0]) == pytest.approx(losses(results[active][0]),
                                                         rel=FALLBACK_RTOL)
    assert [s["grad_norm"] for s in results[fallback][0]["steps"]] == pytest.approx(
        [s["grad_norm"] for s in results[active][0]["steps"]], rel=FALLBACK_RTOL)
    assert losses(results[fallback][0])[-1] < losses(results[fallback][0])[0] - 1.0


@pytest.mark.parametrize("case", ["2-fallback", "2-stepfallback", "3-fallback"])
def test_fallback_keeps_skipped_layers_bit_identical(runs, case):
    results, _ = runs
    skipped = 0
    for rank in results[case]:
        for step in rank["steps"]:
            # weights, fp32 master, Adam moments and step count: frozen iff skipped
            assert step["unchanged"] == [not on for on in step["active"]]
            skipped += step["active"].count(False)
    assert skipped >= 10


def test_a_patch_without_fallback_stops_every_rank_before_training(runs):
    results, _ = runs
    expected = {"fp32-z0": ("DeepSpeedEngine.clip_fp32_gradients", "pipe_fp32_clip"),
                "fp32-z1": ("DeepSpeedZeroOptimizer.scaled_global_norm", "pipe_zero1_norm"),
                "bf16-z0": ("BF16_Optimizer._lazy_init_hp_params_optimizer_state",
                            "pipe_optim_state")}
    for rank in results["pipe"]:
        assert set(rank) == set(expected)
        for config, (method, patch) in expected.items():
            message = rank[config]
            assert message is not None, config  # the pipeline was not built to train
            assert message.startswith(f"{method} differs from DeepSpeed 0.19.8's"), config
            assert f"{patch} has no safe fallback" in message and "\n" not in message
