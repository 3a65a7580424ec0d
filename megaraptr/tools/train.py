"""Pretrain a reference BERT or GPT model with RAPTR under DeepSpeed.

    python -m megaraptr.train --deepspeed_config ds_configs/tiny_raptr_cpu.json \
        --model bert --size tiny --train-steps 300 --save runs/ckpt --summary runs/summary.json
    deepspeed --num_gpus 8 -m megaraptr.train --deepspeed_config ... (or launch/train.sh)
    torchrun --nproc_per_node 2 -m megaraptr.train ...

Works under the deepspeed launcher, torchrun, and as one plain process. Flipping
``"raptr": {"enabled": false}`` trains the full model through the same code path. Order of
work: every input is validated (config, schedule, data paths, checkpoint) before the process
group, the data cache or the model is built; bad input exits 2 with one line on stderr.

Exit codes: 0 finished (or stopped at ``--exit-at-step``); 1 a failure; 2 bad input; 3 the run
diverged (``raptr.on_nonfinite``: a non-finite loss or gradient norm; nothing of that step is
saved); 75 stopped early on SIGTERM/SIGUSR1 or because the launcher died, after saving the
step's checkpoint under ``--save``: the same command with ``--load auto`` continues, so a
launcher requeues on 75 (launch/slurm.sbatch does).

The run in parts, each its own module: the flags (:mod:`~megaraptr.tools.train_args`, frozen),
the checks and what they resolve (:mod:`~megaraptr.tools.preflight`: one frozen ``RunPlan``),
the data (:mod:`~megaraptr.tools.train_data`), the engine on its path behind one interface
(:mod:`~megaraptr.tools.train_setup`: ZeRO or pipeline), signals, launcher and save clock
(:mod:`~megaraptr.tools.run_control`), the loop (:mod:`~megaraptr.tools.train_loop`) and what
is printed and written (:mod:`~megaraptr.tools.train_report`).
"""
from __future__ import annotations

import sys
import time
import warnings
from typing import List, Optional

import torch

from megaraptr.errors import MegaraptrError, RunStopped, RunWarning
from megaraptr.runtime import monitor
from megaraptr.runtime.distributed import init_distributed, shutdown_distributed
from megaraptr.tools.preflight import validate
from megaraptr.tools.run_control import RunControl
from megaraptr.tools.train_args import TrainFlags, parse_args
from megaraptr.tools.train_data import load_data
from megaraptr.tools.train_loop import History, TrainLoop
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
    data = load_data(plan)
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    setup = build_setup(plan, data)  # the engine, on the ZeRO or the pipeline path
    history = History(objective=flags.objective)
    if plan.resume_from:
        history.restore(setup.load(plan.resume_from).get("train", {}))
    engine = setup.engine
    batches = data.batch_source(data.prepared, seq_len=flags.seq_len, seed=flags.seed,
                                micro_batch_size=engine.train_micro_batch_size_per_gpu(),
                                grad_accum=engine.gradient_accumulation_steps(),
                                dp_rank=engine.data_parallel_rank,
                                dp_size=engine.data_parallel_size)
    loop = TrainLoop(plan, setup, batches, history, control)
    tb_dir = monitor.tensorboard_dir(plan.ds_config)
    if history.initial_eval_loss is None:
        history.initial_eval_loss = loop.evaluate(engine.applied_steps)
    if rank == 0:
        print_header(plan, setup, world=world, tokens_per_step=batches.tokens_per_step,
                     tb_dir=tb_dir, notes=plan.notes + data.notes)
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
    summary["stopped"] = stopped
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
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0 or not err.every_rank:  # an agreed stop: one line, from rank 0
            kind = "" if isinstance(err, RunStopped) else "error: "
            print(f"megaraptr-train: {kind}{err}", file=sys.stderr, flush=True)
        return err.exit_code
    finally:
        shutdown_distributed()
        control.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
