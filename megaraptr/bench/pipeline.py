"""Pipeline step-time benchmark: balanced against bernoulli sampling, side by side in one run.

    torchrun --nproc_per_node 2 -m megaraptr.bench.pipeline --model gpt --size mini

Builds two pipeline engines of the same model, weights, data, cost model and partition plan
(``--stages`` pipeline stages, one process each, ZeRO 0 or 1), one sampling ``bernoulli`` and
one ``balanced``, and trains them through the same schedule, alternating step by step (which goes first
alternates) so that machine noise hits both alike. Each step is timed around ``train_batch`` (synchronised on
GPU); the first ``--warmup`` steps of each schedule stage are not counted. For every timed step
it also predicts the step time from the cost model and the step's actual mask with the 1F1B
simulator (:func:`megaraptr.planning.simulate.simulate_1f1b`), so the table shows measured against
predicted ratios per schedule stage. The full-model stage runs the same work under both
samplers: its ratio is the noise floor. Rank 0 prints the table last and writes ``--out``.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import torch

from megaraptr.data import make_batches, resolve_data
from megaraptr.errors import MegaraptrError
from megaraptr.models import DATA_KIND, build_model
from megaraptr.planning.balance import stage_times
from megaraptr.planning.profiling import measure_costs
from megaraptr.planning.simulate import simulate_1f1b
from megaraptr.runtime.distributed import device as accelerator_device, init_distributed
from megaraptr.runtime.pipe import engine as pipeline
from megaraptr.tools.argparsing import OneLineParser


def parse(argv=None):
    p = OneLineParser(prog="megaraptr-bench-pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["gpt", "bert"], default="gpt")
    p.add_argument("--size", default="mini")
    p.add_argument("--data", default=None, help="text/jsonl files or folder (default: sample)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--micro-batches", type=int, default=8, help="per step (1F1B)")
    p.add_argument("--schedule", default="4-6-8")
    p.add_argument("--steps-per-stage", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per schedule stage")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1])
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.warmup >= args.steps_per_stage:
        p.error(f"--warmup {args.warmup} must be below --steps-per-stage {args.steps_per_stage}")
    return args


def ds_config(args, sampling: str) -> dict:
    return {"train_micro_batch_size_per_gpu": args.micro_batch,
            "gradient_accumulation_steps": args.micro_batches, "gradient_clipping": 1.0,
            "steps_per_print": 10 ** 9, "zero_optimization": {"stage": args.zero},
            "bf16": {"enabled": args.bf16},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
            "raptr": {"enabled": True, "schedule": args.schedule, "sampling": sampling,
                      "consistency_check_interval": 0}}


def predicted(engine, mask) -> float:

    parts = engine.layer_parts
    counts = [sum(mask.active[a:b]) for a, b in zip(parts[:-1], parts[1:])]
    times = np.array([stage_times(engine.costs, parts, counts)])
    return float(simulate_1f1b(times, engine.ds.micro_batches)[0])


def run(args) -> dict:

    data = resolve_data(args.data, kind=DATA_KIND[args.model], vocab_size=args.vocab_size)
    init_distributed()
    torch.manual_seed(args.seed)
    reference = build_model(args.model, args.size, vocab_size=data.vocab_size,
                            seq_len=args.seq_len)
    world = torch.distributed.get_world_size()
    num_stages = world  # one process per pipeline stage, no data parallelism
    stages = len(args.schedule.split("-"))
    total = stages * args.steps_per_stage
    probe = make_batches(data, seq_len=args.seq_len, seed=args.seed,
                         micro_batch_size=args.micro_batch, grad_accum=1)
    device = accelerator_device()
    costs = measure_costs(reference, probe.step_batches(1)[0], device=device,
                          dtype=torch.bfloat16 if args.bf16 else None)
    engines = {s: pipeline.initialize(args.model, reference.cfg, config=ds_config(args, s),
                                      num_stages=num_stages, total_steps=total, seed=args.seed,
                                      costs=costs, reference=reference)
               for s in ("bernoulli", "balanced")}
    batches = make_batches(data, seq_len=args.seq_len, seed=args.seed,
                           micro_batch_size=args.micro_batch, grad_accum=args.micro_batches)
    rows = {s: [] for s in engines}
    for step in range(1, total + 1):
        stage = engines["balanced"].schedule.stage_at(step)
        timed = step - stage.first_step >= args.warmup
        order = list(engines.items())
        for name, engine in (order if step % 2 else order[::-1]):  # alternate who goes first
            step_batches = [{k: v.to(device) for k, v in b.items()}
                            for b in batches.step_batches(step)]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = engine.train_step(step_batches)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
            if timed:
                rows[name].append({"step": step, "stage": stage.index, "seconds": float(elapsed),
                                   "predicted": predicted(engine, result.mask),
                                   "mask": str(result.mask), "loss": result.loss})
    table = []
    for index, stage in enumerate(engines["balanced"].schedule.stages):
        pick = {s: [r for r in rows[s] if r["stage"] == index] for s in rows}
        med = {s: statistics.median(r["seconds"] for r in pick[s]) for s in pick}
        pred = {s: statistics.mean(r["predicted"] for r in pick[s]) for s in pick}
        table.append({"stage": stage.name, "keep_prob": stage.keep_prob,
                      "partition": list(engines["balanced"].partitions[index]),
                      "bernoulli_s": med["bernoulli"], "balanced_s": med["balanced"],
                      "measured_ratio": med["balanced"] / med["bernoulli"],
                      "predicted_ratio": pred["balanced"] / pred["bernoulli"]})
    total_s = {s: sum(statistics.median(r["seconds"] for r in rows[s] if r["stage"] == i)
                      for i in range(stages)) for s in rows}
    return {"config": vars(args), "costs_ms": vars(costs), "world": world, "stages": table,
            "measured_ratio": total_s["balanced"] / total_s["bernoulli"],
            "predicted_ratio": sum(t["predicted_ratio"] * t["bernoulli_s"] for t in table)
            / sum(t["bernoulli_s"] for t in table), "steps": rows,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def report(result: dict) -> str:
    lines = [f"pipeline step time, {result['world']} stages, {result['device']}; costs (ms) "
             + ", ".join(f"{k} {v:.3g}" for k, v in result["costs_ms"].items()),
             "| stage | keep p | partition | bernoulli s | balanced s | balanced/bernoulli "
             "measured | predicted |", "|---|---|---|---|---|---|---|"]
    for t in result["stages"]:
        lines.append(f"| {t['stage']} | {t['keep_prob']:.3f} | {t['partition']} | "
                     f"{t['bernoulli_s']:.4f} | {t['balanced_s']:.4f} | "
                     f"{t['measured_ratio']:.3f} | {t['predicted_ratio']:.3f} |")
    lines.append(f"| whole schedule | | | | | {result['measured_ratio']:.3f} | "
                 f"{result['predicted_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        args = parse(argv)
        result = run(args)
    except MegaraptrError as err:
        print(f"megaraptr-bench-pipeline: error: {err}", file=sys.stderr)
        return err.exit_code
    if torch.distributed.get_rank() == 0:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        print(report(result), flush=True)
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
