"""Pretrain a reference BERT or GPT model with RAPTR under DeepSpeed.

    python -m megaraptr.train --deepspeed_config ds_configs/tiny_raptr_cpu.json \
        --model bert --size tiny --train-steps 300 --save runs/ckpt --summary runs/summary.json
    deepspeed --num_gpus 8 -m megaraptr.train --deepspeed_config ... (or launch/train.sh)
    torchrun --nproc_per_node 2 -m megaraptr.train ...

Works under the deepspeed launcher, torchrun, and as one plain process. Flipping
``"raptr": {"enabled": false}`` trains the full model through the same code path. Order of
work: every input is validated (config, schedule, data paths, checkpoint) before the process
group, the data cache or the model is built; bad input exits 2 with one line on stderr.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import struct
import sys
import time
from typing import List, Optional

import torch

import megaraptr
from megaraptr.data import make_batches, resolve_data
from megaraptr.data.ul2 import UL2Batches, UL2Collator, paper_mixture
from megaraptr.errors import MegaraptrError
from megaraptr.models import build_model, optimizer_groups
from megaraptr.models.hf import build_hf_model, causal_inputs, is_hf
from megaraptr.runtime import monitor
from megaraptr.runtime.distributed import init_distributed
from megaraptr.tools.extra_eval import ExtraEvals
from megaraptr.tools.pipeline_run import PipelineRun
from megaraptr.tools.preflight import method_name, validate
from megaraptr.tools.train_args import parse_args


def run_seed(seed: int, step: int, rank: int) -> int:
    """torch's seed for one rank's step, so dropout is a function of (seed, step, rank)."""
    key = struct.pack("<QQQ", seed, step, rank)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def to_device(batches: List[dict], device, inputs=None) -> List[dict]:
    """Batches on ``device``; ``inputs`` maps each to the model's keyword arguments."""
    moved = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batches]
    return [inputs(b) for b in moved] if inputs else moved


def run(args) -> dict:
    raptr_config, ds_config = validate(args)

    data = resolve_data(args.data, kind=args.data_kind, vocab_size=args.vocab_size,
                        tokenizer_file=args.tokenizer)
    args.notes.append(data.describe())  # inputs, split sizes, how val was held out
    ul2, batch_source = None, make_batches  # --objective ul2: UL2 rows, UL2 tokens on top
    if args.objective == "ul2":

        ul2 = UL2Collator(data.vocab_size, args.seq_len, paper_mixture(args.ul2_s_share))
        batch_source = functools.partial(UL2Batches, collator=ul2)
        args.notes.append(ul2.describe())
    from deepspeed import comm as dist

    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    pipe, inputs = None, None
    if args.pipeline_stages:  # DeepSpeed PipelineModule + train_batch (megaraptr.tools.pipeline_run)

        pipe = PipelineRun(args, ds_config, raptr_config, data)
        engine, num_params = pipe.engine, pipe.num_parameters
    else:
        torch.manual_seed(args.seed)
        if is_hf(args.model):  # a transformers model, adapted in place (megaraptr.models.hf)

            model = build_hf_model(args.model, size=args.size, vocab_size=data.vocab_size,
                                   seq_len=args.seq_len, dropout=args.dropout,
                                   checkpoint=args.activation_checkpointing)
            inputs = causal_inputs if args.data_kind == "causal" else None
        else:
            model = build_model(args.model, args.size,
                                vocab_size=ul2.vocab.size if ul2 else data.vocab_size,
                                seq_len=args.seq_len, dropout=args.dropout,
                                checkpoint=args.activation_checkpointing)
        if args.activation_checkpointing == "deepspeed":
            import deepspeed

            deepspeed.checkpointing.configure(None, deepspeed_config=ds_config)
        engine, *_ = megaraptr.initialize(
            model=model, model_parameters=optimizer_groups(model), config=ds_config,
            total_steps=args.train_steps, seed=args.seed)
        num_params = sum(p.numel() for p in model.parameters())
    history = {"initial_eval_loss": None, "wall_seconds": 0.0, "tokens": 0, "eval": [],
               "eval_clock": [], "objective": args.objective}
    if args.load and pipe is not None:
        history.update(pipe.load(engine, args.load).get("train", {}))
    elif args.load:
        _, client_state = engine.load_checkpoint(args.load,
                                                 override_schedule=args.override_raptr_schedule)
        history.update(client_state.get("train", {}))
    dp_rank, dp_size = engine.data_parallel_rank, engine.data_parallel_size
    batches = batch_source(data, seq_len=args.seq_len, seed=args.seed,
                           micro_batch_size=engine.train_micro_batch_size_per_gpu(),
                           grad_accum=engine.gradient_accumulation_steps(),
                           dp_rank=dp_rank, dp_size=dp_size)
    eval_set = to_device(batches.eval_batches(args.eval_sequences,
                                              engine.train_micro_batch_size_per_gpu()),
                         engine.device, inputs)
    extra = ExtraEvals(args.extra_eval, data, seq_len=args.seq_len, sequences=args.eval_sequences,
                       micro_batch=engine.train_micro_batch_size_per_gpu(), dp_rank=dp_rank,
                       dp_size=dp_size, to_device=lambda b: to_device(b, engine.device, inputs))
    tb_dir = monitor.tensorboard_dir(ds_config)

    def evaluate(step: int) -> float:
        loss = engine.evaluate(eval_set)
        history["eval"].append([step, loss])
        history.setdefault("eval_clock", []).append(
            [step, history["wall_seconds"], engine.layer_flops_fraction()])
        monitor.write(engine, monitor.eval_events(step, loss))
        extra.evaluate(engine, step, history)
        return loss

    if history["initial_eval_loss"] is None:
        history["initial_eval_loss"] = evaluate(engine.applied_steps)
    if rank == 0:
        print(f"megaraptr: {args.model}-{args.size}, {num_params:,}"
              f" parameters, {world} process(es), method {method_name(raptr_config)}"
              f", {batches.tokens_per_step:,} tokens/step, kernels {engine.kernels['mode']} "
              f"(optimizer: {engine.kernels['optimizer']}), TensorBoard: {tb_dir}", flush=True)
        for row in engine.schedule.describe():
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        for line in pipe.describe() if pipe is not None else []:
            print(f"megaraptr: {line}", flush=True)
        for note in args.notes:
            print(f"megaraptr: {note}", flush=True)

    from tqdm import tqdm

    bar = tqdm(total=args.train_steps, initial=engine.applied_steps, disable=rank != 0,
               dynamic_ncols=True, desc="train", mininterval=0.5 if sys.stderr.isatty() else 30)
    start, stop_at = time.perf_counter(), args.exit_at_step or args.train_steps
    while engine.applied_steps < stop_at:
        step = engine.applied_steps + 1
        if pipe is not None:
            engine = pipe.step_engine(engine, history)  # re-partitions at planned stage changes
        torch.manual_seed(run_seed(args.seed, step, rank))  # dropout: a function of the step
        t0 = time.perf_counter()
        result = engine.train_step(to_device(batches.step_batches(step), engine.device, inputs))
        loss = engine.mean_over_ranks(result.loss)
        elapsed = time.perf_counter() - t0
        history["wall_seconds"] += elapsed
        history["tokens"] += batches.tokens_per_step
        tps = batches.tokens_per_step / elapsed
        lr_scheduler = engine.lr_scheduler
        monitor.write(engine, monitor.step_events(
            result, loss=loss, lr=lr_scheduler.get_last_lr()[0] if lr_scheduler else
            engine.optimizer.param_groups[0]["lr"], tokens_per_sec=tps,
            layer_flops_fraction=engine.layer_flops_fraction())
            + (pipe.events(engine, result) if pipe is not None else []))
        bar.set_postfix(loss=f"{loss:.3f}", stage=result.stage.name,
                        layers=result.mask.num_active, tok_s=f"{tps:,.0f}", refresh=False)
        bar.update(1 if result.applied else 0)
        done = engine.applied_steps
        if args.eval_interval and done % args.eval_interval == 0 and done < args.train_steps:
            evaluate(done)
        if args.save and (done == stop_at or (args.save_interval and done % args.save_interval == 0)):
            if pipe is not None:
                pipe.save(engine, args.save, f"step{done}", {"train": history})
            else:
                engine.save_checkpoint(args.save, tag=f"step{done}",
                                       client_state={"train": history})
    bar.close()
    if pipe is not None:
        pipe.close()
    session_seconds = time.perf_counter() - start
    finished = engine.applied_steps >= args.train_steps
    final = evaluate(engine.applied_steps) if finished else None
    summary = {
        "steps": engine.applied_steps, "finished": finished, "final_eval_loss": final,
        "initial_eval_loss": history["initial_eval_loss"], "eval_history": history["eval"],
        "eval_clock": history["eval_clock"], **ExtraEvals.summary(history),
        "wall_seconds": history["wall_seconds"], "session_seconds": session_seconds,
        "tokens_per_second": history["tokens"] / max(history["wall_seconds"], 1e-9),
        "tokens": history["tokens"], "layer_flops_fraction": engine.layer_flops_fraction(),
        "expected_layer_flops_fraction": engine.schedule.expected_flops_fraction(),
        "subnetwork_digest": engine.digest.hexdigest, "raptr_enabled": raptr_config.enabled,
        "method": method_name(raptr_config), "kernels": engine.kernels,
        "model": args.model, "size": args.size, "objective": args.objective,
        "world_size": world,
        "pipeline": None if pipe is None else {
            "stages": engine.num_stages, "partition": list(engine.layer_parts),
            "plan": [list(p) for p in engine.partitions], "costs": vars(pipe.costs).copy(),
            "cost_source": pipe.cost_source},
        "schedule": engine.schedule.describe(), "tensorboard_dir": tb_dir, "resumed_from": args.load,
    }
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one line per node: compare across nodes
        print(f"megaraptr: rank {rank} of {world} (first on its node, {socket.gethostname()}): "
              f"{engine.applied_steps} steps, subnetwork digest {engine.digest.hexdigest}",
              flush=True)
    if rank == 0:
        if finished:
            print(f"megaraptr: step {summary['steps']}: eval loss {history['initial_eval_loss']:.4f}"
                  f" at start -> {final:.4f}; layer FLOPs {summary['layer_flops_fraction']:.3f} of "
                  f"full; {summary['tokens_per_second']:,.0f} tokens/s; TensorBoard: {tb_dir}",
                  flush=True)
        else:
            print(f"megaraptr: stopped after step {summary['steps']} (--exit-at-step); resume "
                  f"with --load {args.save}", flush=True)
        if args.summary:
            os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
            with open(args.summary, "w") as f:
                json.dump(summary, f, indent=2)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except MegaraptrError as err:
        print(f"megaraptr-train: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
