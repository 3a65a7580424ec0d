"""megaraptr.tools.resume_check: a checkpoint's manifest against the run that wants to resume
it. Each mismatch is one line (exit 2) naming both values and the fix; another number of
data-parallel processes keeps the global batch by adjusting the accumulation, or is refused
with the fix (ZeRO-3, pipelines, a batch that does not divide). Manifests here are written by
hand in the format the store writes (real ones: tests/e2e/test_checkpoint_faults.py)."""
from __future__ import annotations

import pytest

from megaraptr.core.config import RaptrConfig
from megaraptr.errors import CheckpointError, ConfigError
from megaraptr.methods import build_schedule
from megaraptr.runtime.checkpoints import Resume
from megaraptr.tools import resume_check
from megaraptr.tools.train_args import parse_args

ENGINE = {"world_size": 2, "data_parallel_size": 2, "zero_stage": 2, "pipeline_stages": 0,
          "micro_batch": 8, "grad_accum": 1, "global_batch": 16, "precision": "fp32"}
RUN = {"model": "gpt", "size": "tiny", "vocab_size": 8192, "seq_len": 32, "objective": "causal"}


def resume(**engine) -> Resume:
    content = {"tag": "step4", "step": 4, "engine": dict(ENGINE, **engine), "run": dict(RUN),
               "raptr": None, "files": {}}
    return Resume("/ck", "step4", content)


def check(*flags, ds=None, world=2, **engine):
    args = parse_args(["--deepspeed_config", "x.json", "--model", "gpt", "--size", "tiny",
                       "--seq-len", "32", "--train-steps", "8", "--load", "/ck",
                       "--override-raptr-schedule", *flags])
    ds_config = dict({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
                      "zero_optimization": {"stage": 2}}, **(ds or {}))
    schedule = build_schedule(RaptrConfig(), num_layers=4, total_steps=8)
    notes = resume_check.check(args, ds_config, resume(**engine), schedule=schedule,
                               sampler_seed=1, world=world)
    return notes, ds_config


def test_the_same_run_resumes_without_notes():
    assert check() == ([], {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
                            "zero_optimization": {"stage": 2}})


@pytest.mark.parametrize("flags, message", [
    (["--model", "bert"], "--model bert: /ck/step4 was trained with --model gpt; resume with "
                          "--model gpt"),
    (["--vocab-size", "4096"], "--vocab-size 4096: /ck/step4 was trained with --vocab-size 8192; "
                               "resume with --vocab-size 8192"),
    (["--seq-len", "64"], "--seq-len 64: /ck/step4 was trained with --seq-len 32; resume with "
                          "--seq-len 32"),
    (["--size", "mini"], "--size mini: /ck/step4 was trained with --size tiny; resume with "
                         "--size tiny"),
])
def test_another_model_is_refused_naming_both(flags, message):
    with pytest.raises(CheckpointError) as err:
        check(*flags)
    assert str(err.value) == message


def test_another_zero_stage_precision_or_pipeline_is_refused():
    with pytest.raises(CheckpointError) as err:
        check(ds={"zero_optimization": {"stage": 1}})
    assert str(err.value) == ('zero_optimization.stage 1: /ck/step4 was saved under ZeRO-2; resume '
                              'with "zero_optimization": {"stage": 2} (ZeRO partitions do not '
                              'convert between stages)')
    with pytest.raises(CheckpointError, match="precision bf16: /ck/step4 was saved in fp32; "
                                              "resume in fp32"):
        check(ds={"bf16": {"enabled": True}})
    with pytest.raises(CheckpointError, match="--pipeline-stages 0: /ck/step4 was saved by 2 "
                                              "pipeline stages; resume with --pipeline-stages 2"):
        check(pipeline_stages=2)
    with pytest.raises(ConfigError, match="--objective: ul2, but /ck/step4 was trained with "
                                          "--objective causal"):
        check("--objective", "ul2")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_another_world_size_keeps_the_global_batch_by_accumulation(stage):
    notes, ds = check(world=1, zero_stage=stage, ds={"zero_optimization": {"stage": stage}})
    assert ds["gradient_accumulation_steps"] == 2
    assert notes == ["gradient_accumulation_steps 1 -> 2 to keep the checkpoint's global batch "
                     "of 16 sequences on 1 data-parallel process (saved by 2)"]
    notes, ds = check(world=4, data_parallel_size=1, grad_accum=4, world_size=1, global_batch=32,
                      zero_stage=stage, ds={"gradient_accumulation_steps": 4,
                                            "zero_optimization": {"stage": stage}})
    assert ds["gradient_accumulation_steps"] == 1
    assert notes == ["gradient_accumulation_steps 4 -> 1 to keep the checkpoint's global batch "
                     "of 32 sequences on 4 data-parallel processes (saved by 1)"]


def test_zero0_one_to_two_processes_no_longer_doubles_the_batch_silently():
    notes, ds = check(world=2, data_parallel_size=1, world_size=1, zero_stage=0, grad_accum=2,
                      ds={"gradient_accumulation_steps": 2, "zero_optimization": {"stage": 0},
                          "train_batch_size": 16})
    assert (ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (1, 16)
    assert notes[0].startswith("gradient_accumulation_steps 2 -> 1 to keep")


def test_a_global_batch_that_cannot_be_kept_is_refused_with_the_fix():
    with pytest.raises(CheckpointError) as err:
        check(world=3)
    assert str(err.value) == ("global batch 24 (8 x 1 accumulation x 3 data-parallel processes): "
                              "/ck/step4 was "
                              "trained with 16 (8 x 1 x 2); keep it: resume on 1, 2, 4, 8, 16 "
                              "data-parallel processes (16 sequences do not split over 3)")
    with pytest.raises(CheckpointError) as err:
        check(ds={"train_micro_batch_size_per_gpu": 4})  # same processes, smaller micro-batch
    assert str(err.value).endswith("keep it: set gradient_accumulation_steps to 2")
    with pytest.raises(CheckpointError) as err:
        check(world=4, ds={"train_micro_batch_size_per_gpu": 8})  # 16 / 4 = 4 < 8
    assert str(err.value).endswith("keep it: make train_micro_batch_size_per_gpu x "
                                   "gradient_accumulation_steps = 4")


def test_zero3_and_pipelines_resume_on_the_saved_number_of_processes_only():
    with pytest.raises(CheckpointError) as err:
        check(world=1, zero_stage=3, ds={"zero_optimization": {"stage": 3}})
    assert str(err.value) == ("1 data-parallel process: /ck/step4 was saved by 2 under ZeRO-3, "
                              "which resumes on the same number only; resume on 2 data-parallel "
                              "processes")
    with pytest.raises(CheckpointError, match="was saved by 2 in a pipeline"):
        check("--pipeline-stages", "2", world=2, pipeline_stages=2,
              ds={"zero_optimization": {"stage": 2}})


def test_batch_of_follows_deepspeeds_rules():
    assert resume_check.batch_of({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4},
                                 2) == (4, 4, 32)
    assert resume_check.batch_of({"train_batch_size": 32, "gradient_accumulation_steps": 2},
                                 2) == (8, 2, 32)
    assert resume_check.batch_of({"train_batch_size": 32}, 4) == (8, 1, 32)
    assert resume_check.batch_of({"train_micro_batch_size_per_gpu": "auto"}, 1) is None


@pytest.mark.parametrize("ds, key", [({"checkpoint": {"load_universal": True}},
                                      "checkpoint.load_universal"),
                                     ({"checkpoint": {"writer": {"type": "fast"}}},
                                      "checkpoint.writer"),
                                     ({"datastates": {"enabled": True}}, "datastates")])
def test_checkpoint_settings_megaraptr_cannot_keep_safe_are_refused(ds, key):
    with pytest.raises(ConfigError, match=f"^{key}: not supported: "):
        resume_check.check_config(ds)
    resume_check.check_config({"checkpoint": {"tag_validation": "Warn"}})  # others pass


def test_load_auto_resumes_the_newest_complete_checkpoint_of_save_or_starts_anew(tmp_path):
    from megaraptr.runtime.checkpoints import manifest, store

    def auto(*extra):
        return resume_check.find(parse_args(["--deepspeed_config", "x.json", "--train-steps", "8",
                                             "--load", "auto", *extra]), verify="checksums")

    with pytest.raises(ConfigError, match="^--load: auto resumes the newest complete checkpoint "
                                          "of --save DIR; give --save"):
        auto()
    assert auto("--save", str(tmp_path / "new")) is None  # nothing there yet: a new run
    for step in (2, 4):
        folder = tmp_path / f"step{step}"
        folder.mkdir()
        (folder / "m.pt").write_bytes(bytes([step]) * 100)
        manifest.write(str(folder), {"tag": folder.name, "step": step, "saved_at": step,
                                     "files": manifest.records(str(folder), ["m.pt"], fsync=False)})
    store.write_latest(str(tmp_path), "step4")
    (tmp_path / "step4" / "m.pt").write_bytes(b"\x00" * 100)  # same size, other bytes
    found = auto("--save", str(tmp_path))
    assert (found.tag, found.load_dir) == ("step2", str(tmp_path))
