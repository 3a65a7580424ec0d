"""Command line of the pipeline simulator (``python -m megaraptr.simulate``).

    python -m megaraptr.simulate --layers 48 --stages 8 --micro-batches 32 \\
        --schedule 24-32-40-48 --steps 4000 --out sim.json

Prints the setting, the full-model step and one table row per sampling x partition: mean
step time, its ratio to the ideal (the same 1F1B schedule with each step's work spread evenly
over the pipeline stages, bubble kept), speedup over full-model steps, mean realised
imbalance (busiest / mean pipeline-stage time) and the ratio to the ideal per schedule stage.
``--out`` gets everything as JSON, per schedule stage too. Bad input exits 2 with one line.

Tensor parallelism (T x P x D): ``--tensor-parallel T`` divides the layer cost by T and adds
``--allreduce-cost`` (one active layer's four all-reduces per micro-batch, in the layer cost's
unit); ``--data-parallel D`` only sets the layout shown (data parallelism does not change a
pipeline step). With ``--model-shape LxHxAxF`` every cost is derived in ms from the shape, the
micro-batch and the hardware flags instead (:mod:`megaraptr.planning.tp_costs`)::

    python -m megaraptr.simulate --model-shape 32x4096x32x11008 --seq-len 4096 \
        --tensor-parallel 8 --stages 4 --micro-batches 64 --schedule 16-20-24-28-32
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from megaraptr.errors import ConfigError, MegaraptrError
from megaraptr.planning.balance import Costs
from megaraptr.planning.simulate import simulate, to_rows
from megaraptr.planning.tp_costs import Hardware, parse_shape, shape_costs, with_tensor_parallel
from megaraptr.tools.argparsing import OneLineParser, int_list

PROG = "megaraptr-simulate"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=48, help="transformer layers L (default 48)")
    p.add_argument("--stages", type=int, default=8, help="pipeline stages S (default 8)")
    p.add_argument("--micro-batches", type=int, default=32, help="micro-batches per step M")
    p.add_argument("--layer-cost", type=float, default=1.0,
                   help="fwd+bwd time of one active layer per micro-batch (default 1)")
    p.add_argument("--embedding-cost", type=float, default=0.0,
                   help="fwd+bwd time of the embedding, on the first pipeline stage")
    p.add_argument("--head-cost", type=float, default=0.0,
                   help="fwd+bwd time of final norm, head and loss, on the last pipeline stage")
    p.add_argument("--schedule", default="24-32-40-48",
                   help='expected depths of equal schedule stages, e.g. "24-32-40-48"')
    p.add_argument("--steps", type=int, default=4000, help="total optimizer steps")
    p.add_argument("--fixed-layers", type=int_list, default=[0, -1],
                   help="layers that always run, joined by commas (default 0,-1)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--backward-ratio", type=float, default=2.0,
                   help="backward / forward time (default 2: forward 1/3, backward 2/3)")
    p.add_argument("--p2p-cost", type=float, default=0.0,
                   help="time of one activation or gradient hop between pipeline stages")
    p.add_argument("--min-gain", type=float, default=0.03,
                   help="least predicted gain for a re-partition (default 0.03)")
    t = p.add_argument_group("tensor parallelism (T x P x D)")
    t.add_argument("--tensor-parallel", type=int, default=1, metavar="T",
                   help="GPUs each layer is split over (default 1)")
    t.add_argument("--data-parallel", type=int, default=1, metavar="D",
                   help="data-parallel replicas, for the layout shown (default 1)")
    t.add_argument("--allreduce-cost", type=float, default=0.0,
                   help="the four all-reduces of one active layer per micro-batch under T")
    t.add_argument("--model-shape", default=None, metavar="LxHxAxF",
                   help="derive every cost (ms) from layers x hidden x heads x FFN width")
    t.add_argument("--seq-len", type=int, default=2048, help="with --model-shape")
    t.add_argument("--vocab", type=int, default=32000, help="with --model-shape")
    t.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-batch")
    t.add_argument("--no-gated", dest="gated", action="store_false",
                   help="two FFN matrices (GPT) instead of three (SwiGLU)")
    hw = Hardware()
    t.add_argument("--gpu-tflops", type=float, default=hw.tflops,
                   help=f"achieved TFLOP/s per GPU (default {hw.tflops:g}: H200, measured)")
    t.add_argument("--tp-gbps", type=float, default=hw.tp_gbps,
                   help=f"all-reduce bus bandwidth in a node, GB/s (default {hw.tp_gbps:g})")
    t.add_argument("--tp-latency-us", type=float, default=hw.tp_latency_us,
                   help=f"per all-reduce (default {hw.tp_latency_us:g})")
    t.add_argument("--p2p-gbps", type=float, default=hw.p2p_gbps,
                   help=f"between nodes per GPU, GB/s (default {hw.p2p_gbps:g})")
    p.add_argument("--out", default=None, metavar="FILE", help="write the result as JSON")
    return p


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check the flags; raises ConfigError naming the bad one."""
    args = build_parser().parse_args(argv)
    if args.model_shape:
        args.shape = parse_shape(args.model_shape, seq_len=args.seq_len, vocab=args.vocab,
                                 micro_batch=args.micro_batch, gated=args.gated)
        args.layers = args.shape.layers
    checks = [("--layers", args.layers >= 1, "at least 1"),
              ("--stages", 1 <= args.stages <= args.layers, f"1 to --layers ({args.layers})"),
              ("--micro-batches", args.micro_batches >= 1, "at least 1"),
              ("--layer-cost", args.layer_cost > 0, "above 0"),
              ("--embedding-cost", args.embedding_cost >= 0, "0 or more"),
              ("--head-cost", args.head_cost >= 0, "0 or more"),
              ("--steps", args.steps >= 1, "at least 1"),
              ("--seed", 0 <= args.seed < 2 ** 63, "0 to 2^63 - 1"),
              ("--backward-ratio", args.backward_ratio > 0, "above 0"),
              ("--p2p-cost", args.p2p_cost >= 0, "0 or more"),
              ("--min-gain", 0 <= args.min_gain < 1, "0 to below 1"),
              ("--tensor-parallel", args.tensor_parallel >= 1, "1 or more"),
              ("--data-parallel", args.data_parallel >= 1, "1 or more"),
              ("--allreduce-cost", args.allreduce_cost >= 0, "0 or more"),
              ("--seq-len", args.seq_len >= 1, "1 or more"),
              ("--vocab", args.vocab >= 1, "1 or more"),
              ("--micro-batch", args.micro_batch >= 1, "1 or more"),
              ("--gpu-tflops", args.gpu_tflops > 0, "above 0"),
              ("--tp-gbps", args.tp_gbps > 0, "above 0"),
              ("--tp-latency-us", args.tp_latency_us >= 0, "0 or more"),
              ("--p2p-gbps", args.p2p_gbps > 0, "above 0")]
    for flag, ok, allowed in checks:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            raise ConfigError(flag, f"got {value}; allowed: {allowed}")
    return args


def run(args: argparse.Namespace) -> dict:
    tensor, p2p = args.tensor_parallel, args.p2p_cost
    layout = {"tensor_parallel": tensor, "pipeline_stages": args.stages,
              "data_parallel": args.data_parallel,
              "gpus": tensor * args.stages * args.data_parallel}
    if args.model_shape:
        hw = Hardware(args.gpu_tflops, args.tp_gbps, args.tp_latency_us, args.p2p_gbps)
        derived = shape_costs(args.shape, tensor, hw)
        costs, p2p = derived.costs, derived.p2p
        layout.update(model_shape=args.model_shape, shape=vars(args.shape),
                      hardware=vars(hw), derived_ms=derived.to_dict())
    else:
        costs = with_tensor_parallel(Costs(args.layer_cost, args.embedding_cost, args.head_cost),
                                     tensor, args.allreduce_cost)
        layout.update(allreduce_cost=args.allreduce_cost, one_gpu_layer_cost=args.layer_cost)
    result = simulate(args.layers, args.stages, args.micro_batches, costs, args.schedule,
                      args.steps, fixed_layers=args.fixed_layers, seed=args.seed,
                      backward_ratio=args.backward_ratio, p2p=p2p, min_gain=args.min_gain)
    result["layout"] = layout
    return result


def layout_line(layout: dict) -> str:
    """TP x PP x DP and, for a shape, the derived per-micro-batch costs."""
    line = (f"layout: TP {layout['tensor_parallel']} x PP {layout['pipeline_stages']} x DP "
            f"{layout['data_parallel']} = {layout['gpus']} GPUs")
    if "derived_ms" in layout:
        d, hw = layout["derived_ms"], layout["hardware"]
        line += (f"; {layout['model_shape']}, {layout['shape']['micro_batch']} x "
                 f"{layout['shape']['seq_len']} tokens per micro-batch: layer "
                 f"{d['layer_compute']:.3f} ms on one GPU -> {d['layer']:.3f} ms under TP "
                 f"(all-reduces {d['all_reduce']:.3f}), head {d['head']:.3f} (replicated), "
                 f"p2p hop {d['p2p']:.3f} ms ({hw['tflops']:g} TFLOP/s, {hw['tp_gbps']:g} GB/s "
                 f"all-reduce, {hw['tp_latency_us']:g} us, {hw['p2p_gbps']:g} GB/s p2p)")
    elif layout["tensor_parallel"] > 1:
        line += (f"; layer cost {layout['one_gpu_layer_cost']:g} / {layout['tensor_parallel']} "
                 f"+ all-reduces {layout['allreduce_cost']:g}")
    return line


def report(result: dict) -> str:
    """The printed summary: setting, full-model step, then the table; under --tensor-parallel,
    --data-parallel or --model-shape also the layout line first and the ideal speedup."""
    c, full = result["config"], result["full_model"]
    layout = result.get("layout") or {}
    parallel = layout.get("tensor_parallel", 1) > 1 or layout.get("data_parallel", 1) > 1 or \
        "derived_ms" in layout  # the output without these flags is as it always was
    lines = [f"L={c['layers']} layers, S={c['stages']} pipeline stages, M={c['micro_batches']} "
             f"micro-batches, schedule {c['schedule']} over {c['steps']} steps, fixed layers "
             f"{c['fixed_layers']}, costs layer {c['layer_cost']:g} embedding "
             f"{c['embedding_cost']:g} head {c['head_cost']:g}, backward/forward "
             f"{c['backward_ratio']:g}, p2p {c['p2p_cost']:g}, seed {c['seed']}",
             "ideal: the same 1F1B schedule with each step's work spread evenly over the "
             "pipeline stages (bubble kept)",
             f"full-model step {full['step']:.4g} (partition {full['partition']}, "
             f"{full['ratio_to_ideal']:.3f} x its ideal)"]
    if parallel:
        lines.insert(0, layout_line(layout))
    if parallel and result["rows"]:  # a step's ideal depends only on its total work: any row's
        lines.append(f"ideal speedup (full model's ideal / the schedule's mean ideal): "
                     f"{full['ideal'] / result['rows'][0]['mean_ideal']:.3f}x")
    for mode, plan in result["plans"].items():
        lines.append(f"{mode} partition per schedule stage: "
                     + " | ".join(",".join(map(str, p[1:-1])) for p in plan))
    for sampling, why in result["skipped"].items():
        lines.append(f"{sampling}: skipped ({why})")
    rows = to_rows(result)
    if rows:
        heads = list(rows[0])
        widths = [max(len(h), *(len(r[h]) for r in rows)) for h in heads]
        lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths)) + " |")
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in rows:
            lines.append("| " + " | ".join(r[h].ljust(w) for h, w in zip(heads, widths)) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Command line; returns the exit code (2 for bad input)."""
    try:
        args = parse(argv)
        result = run(args)
    except MegaraptrError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(report(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
