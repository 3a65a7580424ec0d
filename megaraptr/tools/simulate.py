"""Command line of the pipeline simulator (``python -m megaraptr.simulate``).

    python -m megaraptr.simulate --layers 48 --stages 8 --micro-batches 32 \\
        --schedule 24-32-40-48 --steps 4000 --out sim.json

Prints the setting, the full-model step and one table row per sampling x partition: mean
step time, its ratio to the ideal (the same 1F1B schedule with each step's work spread evenly
over the pipeline stages, bubble kept), speedup over full-model steps, mean realised
imbalance (busiest / mean pipeline-stage time) and the ratio to the ideal per schedule stage.
``--out`` gets everything as JSON, per schedule stage too. Bad input exits 2 with one line.
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
    p.add_argument("--out", default=None, metavar="FILE", help="write the result as JSON")
    return p


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check the flags; raises ConfigError naming the bad one."""
    args = build_parser().parse_args(argv)
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
              ("--min-gain", 0 <= args.min_gain < 1, "0 to below 1")]
    for flag, ok, allowed in checks:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            raise ConfigError(flag, f"got {value}; allowed: {allowed}")
    return args


def run(args: argparse.Namespace) -> dict:

    costs = Costs(args.layer_cost, args.embedding_cost, args.head_cost)
    return simulate(args.layers, args.stages, args.micro_batches, costs, args.schedule,
                    args.steps, fixed_layers=args.fixed_layers, seed=args.seed,
                    backward_ratio=args.backward_ratio, p2p=args.p2p_cost,
                    min_gain=args.min_gain)


def report(result: dict) -> str:
    """The printed summary: setting, full-model step, then the table."""

    c, full = result["config"], result["full_model"]
    lines = [f"L={c['layers']} layers, S={c['stages']} pipeline stages, M={c['micro_batches']} "
             f"micro-batches, schedule {c['schedule']} over {c['steps']} steps, fixed layers "
             f"{c['fixed_layers']}, costs layer {c['layer_cost']:g} embedding "
             f"{c['embedding_cost']:g} head {c['head_cost']:g}, backward/forward "
             f"{c['backward_ratio']:g}, p2p {c['p2p_cost']:g}, seed {c['seed']}",
             "ideal: the same 1F1B schedule with each step's work spread evenly over the "
             "pipeline stages (bubble kept)",
             f"full-model step {full['step']:.4g} (partition {full['partition']}, "
             f"{full['ratio_to_ideal']:.3f} x its ideal)"]
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
