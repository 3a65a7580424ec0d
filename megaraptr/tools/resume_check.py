"""What ``megaraptr-train --load`` checks about the checkpoint before anything is built.

:func:`find` picks the checkpoint, the one place ``--load DIR`` and ``--load auto`` are
resolved (what ``latest`` names, verified, else the newest complete one; ``auto``: in
``--save``, or a new run when nothing was saved there yet), and :func:`check` compares it with
the run, from the checkpoint's manifest (plain JSON) and files read with the weights-only
loader. Every mismatch is one line (exit 2) naming both values and the fix: model, size,
vocabulary, sequence length, objective, ZeRO stage, precision, pipeline stages, schedule and
seed, and the global batch. On another number of data-parallel processes the global batch is
kept by adjusting the gradient accumulation (a note says so) when it divides; ZeRO-3 and
pipelines resume on the saved number only.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from megaraptr.errors import CheckpointError, ConfigError
from megaraptr.runtime import checkpoints
from megaraptr.runtime.checkpoints import manifest, safe_load
from megaraptr.runtime.resume_state import check_compatible
from megaraptr.tools.train_args import TrainFlags

AUTO = "auto"
"""``--load auto``: --save's newest complete checkpoint, else a new run (:func:`find`)."""
RUN_FLAGS = (("model", "--model"), ("size", "--size"), ("vocab_size", "--vocab-size"),
             ("seq_len", "--seq-len"))


def run_facts(flags: TrainFlags) -> dict:
    """The run's facts a checkpoint records in its manifest (checked on resume)."""
    return {"model": flags.model, "size": flags.size, "vocab_size": flags.vocab_size,
            "seq_len": flags.seq_len, "objective": flags.objective}


def check_config(ds_config: dict) -> None:
    """Refuse DeepSpeed checkpoint settings megaraptr cannot keep safe, before anything is built:
    universal checkpoints and other checkpoint engines (docs/reliability.md)."""
    block = ds_config.get("checkpoint") or {}
    if block.get("load_universal"):
        raise ConfigError("checkpoint.load_universal", "not supported: DeepSpeed 0.19.8's "
                          "universal conversion fails on layers RAPTR has not trained yet and its "
                          "loader unpickles unsafely; megaraptr resumes ZeRO-0/1/2 checkpoints on "
                          "another number of processes itself: remove it and --load the "
                          "checkpoint as saved")
    if block.get("writer") is not None or (ds_config.get("datastates") or {}).get("enabled"):
        raise ConfigError("checkpoint.writer" if block.get("writer") is not None else
                          "datastates", "not supported: megaraptr reads and verifies checkpoints "
                          "through DeepSpeed's default checkpoint engine; remove it")


def find(flags: TrainFlags, *, verify: str = "sizes") -> Optional[checkpoints.Resume]:
    """The checkpoint ``--load`` resumes (None: a new run), its files verified (``verify``:
    :func:`megaraptr.runtime.checkpoints.resolve`'s modes).

    ``--load DIR``: what ``DIR/latest`` names, verified, else the newest complete one.
    ``--load auto`` (one fixed command, safe to requeue): the same in ``--save``, or a new run
    when ``--save`` holds no complete checkpoint and no ``latest`` (no folder yet, a job that
    died before its first save completed). A ``latest`` naming a broken checkpoint with
    nothing complete to fall back to is refused, never silently restarted.

    Raises:
        ConfigError: ``--load auto`` without ``--save``.
        CheckpointError: nothing there can be resumed (one line naming why).
    """
    if flags.load != AUTO:
        return checkpoints.resolve(flags.load, verify=verify)
    if not flags.save:
        raise ConfigError("--load", "auto resumes the newest complete checkpoint of --save DIR; "
                          "give --save DIR (or --load DIR)")
    if checkpoints.newest_complete(flags.save, verify=verify) is None and \
            checkpoints.read_latest(flags.save) is None:
        return None  # a new run
    return checkpoints.resolve(flags.save, verify=verify)


def scan(resume: checkpoints.Resume, rank: int = 0, world: int = 1) -> None:
    """Read every pickle of the checkpoint (this rank's share) with the weights-only loader,
    tensor data mapped, not read: a file that would run code is refused here, in one line."""
    names = [n for n in manifest.list_files(resume.path) if n.endswith(".pt")]
    for name in names[rank::world]:
        safe_load.load(os.path.join(resume.path, name), mmap=True)


def batch_of(ds_config: dict, dp: int) -> Optional[Tuple[int, int, int]]:
    """(micro-batch, accumulation, global batch) as DeepSpeed derives them on ``dp``
    data-parallel processes (None: the config leaves them to someone else, e.g. "auto")."""
    tb, mb, ga = (ds_config.get(k) for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                             "gradient_accumulation_steps"))
    if any(v is not None and (not isinstance(v, int) or isinstance(v, bool)) for v in (tb, mb, ga)):
        return None
    if tb is not None and mb is not None and ga is None:
        ga = tb // (mb * dp)
    elif tb is not None and ga is not None and mb is None:
        mb = tb // (ga * dp)
    elif tb is not None and mb is None:
        ga, mb = 1, tb // dp
    mb, ga = mb or 1, ga or 1
    return mb, ga, mb * ga * dp


def check(flags: TrainFlags, ds_config: dict, resume: checkpoints.Resume, *, schedule,
          sampler_seed: int, world: int) -> List[str]:
    """Refuse a checkpoint this run cannot continue; returns notes (an adjusted accumulation).

    ``ds_config``'s gradient accumulation may be changed to keep the checkpoint's global batch.
    """
    path = resume.path
    check_compatible(resume.state("raptr"), schedule, sampler_seed, path,
                     flags.override_raptr_schedule)
    run, facts = resume.run(), resume.facts()
    objective = run.get("objective") or (resume.state("train") or {}).get("objective", "causal")
    if flags.model == "gpt" and objective != flags.objective:
        raise ConfigError("--objective", f"{flags.objective}, but {path} was trained with "
                          f"--objective {objective} (another vocabulary); allowed: {objective}")
    for key, flag in RUN_FLAGS:
        if key in run and run[key] != getattr(flags, key):
            raise CheckpointError(f"{flag} {getattr(flags, key)}: {path} was trained with {flag} "
                                  f"{run[key]}; resume with {flag} {run[key]}")
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    if "zero_stage" in facts and facts["zero_stage"] != stage:
        raise CheckpointError(f"zero_optimization.stage {stage}: {path} was saved under ZeRO-"
                              f"{facts['zero_stage']}; resume with \"zero_optimization\": "
                              f"{{\"stage\": {facts['zero_stage']}}} (ZeRO partitions do not "
                              "convert between stages)")
    precision = "bf16" if (ds_config.get("bf16") or {}).get("enabled") else \
        "fp16" if (ds_config.get("fp16") or {}).get("enabled") else "fp32"
    if "precision" in facts and facts["precision"] != precision:
        raise CheckpointError(f"precision {precision}: {path} was saved in {facts['precision']}; "
                              f"resume in {facts['precision']} (the config's bf16/fp16 block)")
    stages = flags.pipeline_stages
    if "pipeline_stages" in facts and facts["pipeline_stages"] != stages:
        raise CheckpointError(f"--pipeline-stages {stages}: {path} was saved by "
                              f"{facts['pipeline_stages']} pipeline stages; resume with "
                              f"--pipeline-stages {facts['pipeline_stages']}")
    return _batch(ds_config, facts, path, dp=max(1, world // max(1, stages)),
                  pipeline=bool(stages))


def _batch(ds_config: dict, facts: dict, path: str, *, dp: int, pipeline: bool) -> List[str]:
    saved_dp = facts.get("data_parallel_size")
    if saved_dp is not None and saved_dp != dp and (facts.get("zero_stage") == 3 or pipeline):
        what = "under ZeRO-3" if facts.get("zero_stage") == 3 else "in a pipeline"
        raise CheckpointError(f"{_processes(dp)}: {path} was saved by {saved_dp} {what}, "
                              f"which resumes on the same number only; resume on "
                              f"{_processes(saved_dp)}")
    now = batch_of(ds_config, dp)
    saved = tuple(facts.get(k) for k in ("micro_batch", "grad_accum", "global_batch"))
    if now is None or None in saved or now[2] == saved[2]:
        return []
    (micro, accum, total), (s_micro, s_accum, s_total) = now, saved
    shape = f"{micro} x {accum} accumulation x {_processes(dp)}"
    if micro == s_micro and accum == s_accum and s_total % (micro * dp) == 0:
        new = s_total // (micro * dp)
        ds_config["gradient_accumulation_steps"] = new
        if "train_batch_size" in ds_config:
            ds_config["train_batch_size"] = s_total
        return [f"gradient_accumulation_steps {accum} -> {new} to keep the checkpoint's global "
                f"batch of {s_total} sequences on {_processes(dp)} (saved by {saved_dp})"]
    if s_total % (micro * dp) == 0:
        fix = f"set gradient_accumulation_steps to {s_total // (micro * dp)}"
    elif s_total % dp == 0:
        fix = f"make train_micro_batch_size_per_gpu x gradient_accumulation_steps = " \
              f"{s_total // dp}"
    else:
        ok = [d for d in range(1, s_total + 1) if s_total % d == 0]
        fix = f"resume on {', '.join(map(str, ok[:8]))} data-parallel processes ({s_total} " \
              f"sequences do not split over {dp})"
    raise CheckpointError(f"global batch {total} ({shape}): {path} was trained with {s_total} "
                          f"({s_micro} x {s_accum} x {saved_dp}); keep it: {fix}")


def _processes(n: int) -> str:
    return f"{n} data-parallel process{'' if n == 1 else 'es'}"
