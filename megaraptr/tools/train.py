"""Pretrain a reference BERT or GPT model with RAPTR under DeepSpeed.

    python -m megaraptr.train --deepspeed_config ds_configs/tiny_raptr_cpu.json \
        --model bert --size tiny --train-steps 300 --save runs/ckpt --summary runs/summary.json
    deepspeed --num_gpus 8 -m megaraptr.train --deepspeed_config ... (or launch/train.sh)
    torchrun --nproc_per_node 2 -m megaraptr.train ...

Works under the deepspeed launcher, torchrun, and as one plain process. Flipping
``"raptr": {"enabled": false}`` trains the full model through the same code path. Order of
work: every input is validated (config, schedule, data paths, checkpoint) before the process
group, the data cache or the model is built; bad input exits 2 with one line on stderr.

The run in parts, each its own module: the flags (:mod:`~megaraptr.tools.train_args`, frozen),
the checks and what they resolve (:mod:`~megaraptr.tools.preflight`: one frozen ``RunPlan``),
the data (:mod:`~megaraptr.tools.train_data`), the engine on its path behind one interface
(:mod:`~megaraptr.tools.train_setup`: ZeRO or pipeline), the loop
(:mod:`~megaraptr.tools.train_loop`) and what is printed and written
(:mod:`~megaraptr.tools.train_report`).
"""
from __future__ import annotations

import sys
import time
import warnings
from typing import List, Optional

import torch

from megaraptr.errors import MegaraptrError, RunWarning
from megaraptr.runtime import monitor
from megaraptr.runtime.distributed import init_distributed, shutdown_distributed
from megaraptr.tools.preflight import validate
from megaraptr.tools.train_args import TrainFlags, parse_args
from megaraptr.tools.train_data import load_data
from megaraptr.tools.train_loop import History, TrainLoop
from megaraptr.tools.train_report import print_header, report, summarize
from megaraptr.tools.train_setup import build_setup


def run(flags: TrainFlags) -> dict:
    """One session of a run: check, build, train, evaluate, report; returns the summary."""
    plan = validate(flags)  # every check that needs nothing built
    data = load_data(plan)
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    setup = build_setup(plan, data)  # the engine, on the ZeRO or the pipeline path
    history = History(objective=flags.objective)
    if flags.load:
        history.restore(setup.load(flags.load).get("train", {}))
    engine = setup.engine
    batches = data.batch_source(data.prepared, seq_len=flags.seq_len, seed=flags.seed,
                                micro_batch_size=engine.train_micro_batch_size_per_gpu(),
                                grad_accum=engine.gradient_accumulation_steps(),
                                dp_rank=engine.data_parallel_rank,
                                dp_size=engine.data_parallel_size)
    loop = TrainLoop(plan, setup, batches, history)
    tb_dir = monitor.tensorboard_dir(plan.ds_config)
    if history.initial_eval_loss is None:
        history.initial_eval_loss = loop.evaluate(engine.applied_steps)
    if rank == 0:
        print_header(plan, setup, world=world, tokens_per_step=batches.tokens_per_step,
                     tb_dir=tb_dir, notes=plan.notes + data.notes)
    start = time.perf_counter()
    loop.train()
    setup.close()
    session_seconds = time.perf_counter() - start
    finished = setup.engine.applied_steps >= flags.train_steps
    final = loop.evaluate(setup.engine.applied_steps) if finished else None
    summary = summarize(plan, setup, history, final=final, session_seconds=session_seconds,
                        world=world, tb_dir=tb_dir)
    report(plan, summary, rank=rank)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    flags = parse_args(argv)
    warnings.simplefilter("ignore", RunWarning)  # preflight prints them among the run's notes
    try:
        run(flags)
    except MegaraptrError as err:
        print(f"megaraptr-train: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
