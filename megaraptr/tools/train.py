"""Pretrain a reference BERT or GPT model with RAPTR under DeepSpeed.

    python -m megaraptr.train --deepspeed_config ds_configs/tiny_raptr_cpu.json \
        --model bert --size tiny --train-steps 300 --save runs/ckpt --summary runs/summary.json
    deepspeed --num_gpus 8 -m megaraptr.train --deepspeed_config ... (or launch/train.sh)
    torchrun --nproc_per_node 2 -m megaraptr.train ...

Works under the deepspeed launcher, torchrun, and as one plain process. Flipping
``"raptr": {"enabled": false}`` trains the full model through the same code path. Order of
work: every input is validated (config, schedule, data paths, checkpoint) before the process
group, the data cache or the model is built; bad input exits 2 with one line on stderr.
Checkpoints (:mod:`megaraptr.runtime.checkpoints`): global rank 0 holds a lock on ``--save``
for the whole session (a second run on the folder exits 2); a checkpoint to resume (``--load
DIR`` or ``--load auto``: :func:`megaraptr.tools.resume_check.find`) is verified against its
manifest by all ranks together once the process group exists, falling back to the newest
complete one; every save, a stop's included, is complete or absent.

Exit codes (:mod:`megaraptr.errors`): 0 finished (or stopped at ``--exit-at-step``); 1 a
failure; 2 bad input; 3 the run diverged (``raptr.on_nonfinite``: a non-finite loss, gradient
norm or weights at a save; nothing of that step is saved); 74 a checkpoint could not be
written completely (the previous checkpoint and ``latest`` kept); 75 stopped early on
SIGTERM/SIGUSR1 or because the launcher died, after saving the step's checkpoint under
``--save``: the same command with ``--load auto`` continues, so a launcher requeues on 75
(launch/slurm.sbatch does).

The run in parts, each its own module: the flags (:mod:`~megaraptr.tools.train_args`, frozen),
the checks and what they resolve (:mod:`~megaraptr.tools.preflight`: one frozen ``RunPlan``),
the data (:mod:`~megaraptr.tools.train_data`), the engine on its path behind one interface
(:mod:`~megaraptr.tools.train_setup`: ZeRO or pipeline), signals, launcher and save clock
(:mod:`~megaraptr.tools.run_control`), the loop (:mod:`~megaraptr.tools.train_loop`) and what
is printed and written (:mod:`~megaraptr.tools.train_report`).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
import warnings
from typing import List, Optional

import torch

from megaraptr.errors import CheckpointError, MegaraptrError, RunStopped, RunWarning
from megaraptr.methods import build_schedule
from megaraptr.runtime import checkpoints, monitor
from megaraptr.runtime.distributed import init_distributed, shutdown_distributed
from megaraptr.tools import resume_check
from megaraptr.tools.extra_eval import ExtraEvals
from megaraptr.tools.preflight import RunPlan, validate
from megaraptr.tools.run_control import RunControl
from megaraptr.tools.train_args import TrainFlags, parse_args
from megaraptr.tools.train_data import data_summary, describe_data, load_data
from megaraptr.tools.train_log import hide_known_warnings
from megaraptr.tools.train_loop import History, TrainLoop, to_device
from megaraptr.tools.train_report import print_header, report, summarize
from megaraptr.tools.train_setup import build_setup


def run(flags: TrainFlags, control: Optional[RunControl] = None) -> dict:
    """One session of a run: check, build, train, evaluate, report; returns the summary.

    Raises:
        RunStopped: a signal or the launcher's death stopped it (after the summary).
    """
    if control is None:  # signals are caught from here on: none ends a session unsaved
        control = RunControl(save_every_minutes=flags.save_every_minutes)
        try:
            return run(flags, control)
        finally:
            control.close()
    plan = validate(flags)  # every check that needs nothing built
    lock = take_lock(flags.save)  # one run writes a --save folder at a time
    try:
        return _session(plan, control)
    finally:
        if lock is not None:
            lock.release()


def take_lock(save_dir: Optional[str]) -> Optional[checkpoints.RunLock]:
    """Global rank 0 takes the lock on --save; the other ranks only look (a live lock of
    another launch stops them too). Raises CheckpointError (one line) when the folder is
    another run's."""
    if not save_dir:
        return None
    if int(os.environ.get("RANK", "0")) != 0:
        checkpoints.check_lock(save_dir)
        return None
    lock = checkpoints.RunLock.acquire(save_dir)
    if lock.note:
        print(f"megaraptr: warning: {lock.note}", file=sys.stderr, flush=True)
    return lock


def verified_resume(plan: RunPlan) -> Optional[checkpoints.Resume]:
    """The checkpoint to resume, its checksums verified by all ranks together (each hashes a
    share); a fallback to an older checkpoint is checked against the run like the first."""
    if plan.resume is None:
        return None
    resume = checkpoints.resolve(plan.resume.load_dir, plan.resume.requested,
                                 verify="collective")
    for note in resume.notes:
        checkpoints.warn(note)
    if resume.tag != plan.resume.tag:
        flags, ds_config = plan.flags, copy.deepcopy(plan.ds_config)
        schedule = build_schedule(plan.raptr, num_layers=plan.num_layers,
                                  total_steps=flags.train_steps)
        resume_check.check(flags, ds_config, resume, schedule=schedule,
                           sampler_seed=plan.sampler_seed,
                           world=torch.distributed.get_world_size())
        if ds_config != plan.ds_config:
            raise CheckpointError(f"{resume.path} needs another batch setup than "
                                  f"{plan.resume.path}; resume it explicitly")
    return resume


def _session(plan: RunPlan, control: RunControl) -> dict:
    flags = plan.flags
    data = load_data(plan)
    quiet = hide_known_warnings()
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    resume = verified_resume(plan)
    plan = dataclasses.replace(plan, resume=resume)  # what the run resumes, after verification
    setup = build_setup(plan, data, resume)  # the engine, on the ZeRO or the pipeline path
    history = History(objective=flags.objective, run_id=plan.run_id)
    if resume is not None:
        history.restore(setup.load(resume).get("train", {}))
    engine = setup.engine
    batches = data.batch_source(data.prepared, seq_len=flags.seq_len, seed=flags.seed,
                                micro_batch_size=engine.train_micro_batch_size_per_gpu(),
                                grad_accum=engine.gradient_accumulation_steps(),
                                dp_rank=engine.data_parallel_rank,
                                dp_size=engine.data_parallel_size)
    extra = ExtraEvals(flags.extra_eval, data.prepared, seq_len=flags.seq_len,
                       sequences=flags.eval_sequences,
                       micro_batch=engine.train_micro_batch_size_per_gpu(),
                       dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size,
                       to_device=lambda b: to_device(b, engine.device, setup.inputs))
    loop = TrainLoop(plan, setup, batches, history, control, extra)
    data_facts = data_summary(data, batches, flags.train_steps)
    tb_dir = monitor.tensorboard_dir(plan.ds_config)
    if history.initial_eval_loss is None:
        history.initial_eval_loss = loop.evaluate(engine.applied_steps)
    if rank == 0:
        print_header(plan, setup, world=world, tokens_per_step=batches.tokens_per_step,
                     tb_dir=tb_dir, notes=plan.notes + data.notes +
                     (describe_data(data_facts, flags.train_steps), quiet))
    start = time.perf_counter()
    try:
        stopped = loop.train()
    finally:
        setup.close()
    session_seconds = time.perf_counter() - start
    finished = setup.engine.applied_steps >= flags.train_steps
    final = loop.evaluate(setup.engine.applied_steps) if finished else None
    summary = summarize(plan, setup, history, final=final, session_seconds=session_seconds,
                        world=world, tb_dir=tb_dir)
    summary.update(stopped=stopped, data=data_facts)
    report(plan, summary, rank=rank)
    if stopped:
        saved = f"checkpoint {loop.saved} saved in {flags.save}" if flags.save else \
            "nothing saved (no --save)"
        raise RunStopped(f"stopped after step {summary['steps']} on {stopped}: {saved}; the "
                         "same command with --load auto continues (exit code 75)")
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    flags = parse_args(argv)
    warnings.simplefilter("ignore", RunWarning)  # preflight prints them among the run's notes
    control = RunControl(save_every_minutes=flags.save_every_minutes)
    try:
        run(flags, control)
    except MegaraptrError as err:
        if _global_rank() == 0 or not err.every_rank:  # an agreed stop: one line, from rank 0
            kind = "" if isinstance(err, RunStopped) else "error: "
            print(f"megaraptr-train: {kind}{err}", file=sys.stderr, flush=True)
        return err.exit_code
    finally:
        shutdown_distributed()
        control.close()
    return 0


def _global_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


if __name__ == "__main__":
    sys.exit(main())
