"""Step-time benchmark: optimizer-step time against the number of active layers k.

For one model, size, precision and device it measures, in one run, the median step time at
k = 0, L/4, L/2, 3L/4, L active layers (a fresh random subset of exactly k layers each step)
under DeepSpeed+megaraptr at each requested ZeRO stage, and the same model as plain PyTorch
(the ideal: no DeepSpeed, skipped layers get no gradient and no optimizer work). It prints the
fixed and per-layer cost of each path (least squares t(k) = fixed + per_layer * k), the
speedup t(L)/t(k) measured at each k, and efficiency = DeepSpeed speedup / plain speedup;
the JSON (``--out``) holds every sample. The table comes last.

All ks are measured on one engine per ZeRO stage: the ks, ascending, are the stages of one
ordinary raptr schedule (exact sampling, no fixed layers) after one untimed full-model step,
so nothing is swapped inside the engine (see :mod:`megaraptr.bench.timing`).

    python -m megaraptr.bench.step_time --model bert --size base --zero 1,2 --precision bf16
    torchrun --nproc_per_node 2 -m megaraptr.bench.step_time --size mini --zero 2 --device cpu

Under torchrun every rank runs the plain path on its own (no communication: the compute-only
ideal); rank 0 times, prints and writes. Bad input exits 2 with one line before anything is
built. A ZeRO stage megaraptr refuses is reported (JSON ``error``), the others still run.
How the loops work: :mod:`megaraptr.bench.timing`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Dict, List, Optional

from megaraptr.errors import ConfigError, MegaraptrError

PROG = "megaraptr-bench-step-time"
# (micro batch, seq len) per size: base/medium as in docs/gpu.md, tiny/mini CPU-friendly.
SHAPES = {"tiny": (8, 128), "mini": (8, 128), "base": (64, 512), "medium": (16, 1024)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ConfigError("arguments", message)


def _int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers joined by commas, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from megaraptr.models import MODELS, SIZES

    p = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="bert")
    p.add_argument("--size", choices=list(SIZES), default="base")
    p.add_argument("--zero", type=_int_list, action="append", default=None, metavar="STAGES",
                   help="ZeRO stage(s): repeat or join with commas, e.g. 1,2,3 (default 2)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda if available")
    p.add_argument("--ks", type=_int_list, default=None,
                   help="active-layer counts (default 0,L/4,L/2,3L/4,L rounded; L is always added)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per k (cuda 20, cpu 6)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per k (cuda 5, cpu 2)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per rank and step")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--skipped-layers", choices=["freeze", "momentum"], default="freeze")
    p.add_argument("--data", default=None, help="as megaraptr.train (default: built-in sample)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.add_argument("--extra-ds-config", default="{}", metavar="JSON",
                   help="merged into every ds_config, e.g. '{\"gradient_clipping\": 1.0}'")
    p.add_argument("--compile-blocks", action="store_true", help="block.compile() on each block")
    p.add_argument("--breakdown", action="store_true", help="also time forward/backward/step "
                   "(synchronizes at each boundary, so totals grow slightly)")
    return p


def parse(argv: Optional[List[str]] = None):
    """Arguments, validated and completed with defaults; (args, plan).

    Raises:
        ConfigError: any bad input, before anything is built.
    """
    from megaraptr.bench.timing import Plan, ds_config
    from megaraptr.config import split_ds_config
    from megaraptr.models import num_layers
    from megaraptr.schedule import build_schedule

    args = build_parser().parse_args(argv)
    L = num_layers(args.size)
    zero = sorted({z for group in (args.zero or [[2]]) for z in group})
    if any(z not in (0, 1, 2, 3) for z in zero):
        raise ConfigError("--zero", f"{zero} has a stage outside 0, 1, 2, 3")
    ks = args.ks if args.ks is not None else [round(L * q / 4) for q in range(5)]
    bad = [k for k in ks if not 0 <= k <= L]
    if bad:
        raise ConfigError("--ks", f"{bad[0]} is outside 0..{L} (the {args.size} model has {L} "
                          "layers)")
    if args.device is None:
        import torch

        cpu = os.environ.get("DS_ACCELERATOR") == "cpu" or not torch.cuda.is_available()
        args.device = "cpu" if cpu else "cuda"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device", "cuda is not available here; use --device cpu")
    cpu = args.device == "cpu"
    if not cpu and os.environ.get("DS_ACCELERATOR", "cuda") != "cuda":
        raise ConfigError("--device", f"cuda, but DS_ACCELERATOR is {os.environ['DS_ACCELERATOR']}")
    args.precision = args.precision or ("fp32" if cpu else "bf16")
    for name, value, default in (("steps", args.steps, 6 if cpu else 20),
                                 ("warmup", args.warmup, 2 if cpu else 5)):
        if value is not None and value < (1 if name == "steps" else 0):
            raise ConfigError(f"--{name}", f"must be at least {1 if name == 'steps' else 0}")
        setattr(args, name, default if value is None else value)
    shape = SHAPES[args.size]
    args.micro_batch = args.micro_batch or shape[0]
    args.seq_len = args.seq_len or shape[1]
    if args.micro_batch < 1 or args.seq_len < 3:
        raise ConfigError("--micro-batch/--seq-len", "need at least 1 sequence of 3 tokens")
    try:
        extra = json.loads(args.extra_ds_config)
    except json.JSONDecodeError as err:
        raise ConfigError("--extra-ds-config", f"not valid JSON: {err.msg}") from None
    if not isinstance(extra, dict):
        raise ConfigError("--extra-ds-config", "must be a JSON object")
    plan = Plan(model=args.model, size=args.size, num_layers=L, ks=sorted(set(ks) | {L}),
                steps=args.steps, warmup=args.warmup, micro_batch=args.micro_batch,
                seq_len=args.seq_len, precision=args.precision, device=args.device,
                skipped_layers=args.skipped_layers, seed=args.seed,
                compile_blocks=args.compile_blocks, breakdown=args.breakdown,
                extra_ds_config=extra)
    args.zero = zero
    for stage in zero:  # the raptr block and schedule, checked the way initialize will
        raptr, _ = split_ds_config(ds_config(plan, stage))
        build_schedule(raptr, num_layers=L, total_steps=plan.total_steps)
    return args, plan


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    return f"cpu: {model} ({os.cpu_count()} cores)"


def report(result: dict) -> str:
    """The text printed at the end: device, versions, config, fits, and the table last.

    Args:
        result: what :func:`run` returned.
    """
    paths, ks = result["paths"], result["ks"]
    c = result["config"]
    lines = [f"device: {result['device']}; world size {result['world_size']}; torch "
             f"{result['versions']['torch']}, deepspeed {result['versions']['deepspeed']}",
             f"config: {c['model']}-{c['size']} (L={result['num_layers']}), {c['precision']}, "
             f"micro batch {c['micro_batch']} x seq {c['seq_len']} per rank, skipped layers "
             f"{c['skipped_layers']}, {c['steps']} timed + {c['warmup']} warmup steps per k"
             f"{', compiled blocks' if c['compile_blocks'] else ''}"]
    ok = [n for n in paths if "error" not in paths[n]]
    for name in ok:
        fit = paths[name]["fit"]
        lines.append(f"{name}: fixed {fit['fixed_ms']:.2f} ms + {fit['per_layer_ms']:.2f} ms "
                     "per layer")
        for k in ks:
            phases = paths[name]["per_k"][str(k)].get("phases_median_ms")
            if phases:
                lines.append(f"  k={k} phases (ms): " + ", ".join(
                    f"{n} {v:.1f}" for n, v in phases.items()))
    lines += [f"{n}: not measured: {paths[n]['error']}" for n in paths if n not in ok]
    header = ["k"]
    for name in ok:
        header += [f"{name} ms", "speedup"] + (["eff"] if name != "plain" else [])
    rows = [header]
    for k in ks:
        row = [str(k)]
        for name in ok:
            entry = paths[name]["per_k"][str(k)]
            row += [f"{entry['median_ms']:.1f}", f"{entry['speedup']:.2f}x"]
            if name != "plain":
                row.append(f"{entry['efficiency']:.3f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += [" | ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def run(args, plan) -> dict:
    """Measure the plain path once, then each ZeRO stage in turn.

    Args:
        args: the parsed arguments (``parse``); ``args.zero`` lists the stages.
        plan: the :class:`~megaraptr.bench.timing.Plan` every path follows.

    Returns:
        The result (what ``--out`` holds), on every rank; rank 0's timings.
    """
    from megaraptr.bench import timing
    from megaraptr.data import make_batches, resolve_data
    from megaraptr.models import DATA_KIND

    data = resolve_data(args.data, kind=DATA_KIND[args.model], vocab_size=args.vocab_size,
                        needed_by=f"--model {args.model}")
    import deepspeed
    import torch
    from deepspeed import comm as dist

    from megaraptr.distributed import init_distributed

    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    batches = make_batches(data, seq_len=plan.seq_len, micro_batch_size=plan.micro_batch,
                           dp_rank=rank, dp_size=world, seed=plan.seed)
    config = dict(vars(plan), vocab_size=data.vocab_size, data=str(data.path),
                  zero=args.zero, tokens_per_step_per_rank=plan.micro_batch * plan.seq_len)
    paths: Dict[str, dict] = {}
    dist.barrier()
    paths["plain"] = dict(timing.summarize(timing.run_plain(plan, batches, data.vocab_size, device),
                                    plan.num_layers), kind="plain")
    for stage in args.zero:
        name = f"zero{stage}"
        dist.barrier()
        try:
            raw = timing.run_deepspeed(plan, stage, batches, data.vocab_size, device)
        except ConfigError as err:  # e.g. a stage megaraptr does not support yet
            timing.release(device)
            paths[name] = {"kind": "deepspeed", "zero_stage": stage, "error": str(err)}
            continue
        entry = dict(timing.summarize(raw, plan.num_layers), kind="deepspeed", zero_stage=stage,
                     ds_config=timing.ds_config(plan, stage))
        for k, row in entry["per_k"].items():
            row["efficiency"] = row["speedup"] / paths["plain"]["per_k"][k]["speedup"]
        paths[name] = entry
    versions = {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                "python": platform.python_version()}
    return {"config": config, "device": device_name(args.device), "versions": versions,
            "world_size": world, "rank": rank, "num_layers": plan.num_layers, "ks": plan.ks,
            "paths": paths}


def main(argv: Optional[List[str]] = None) -> int:
    """Command line; returns the exit code (2 bad input, 1 a stage failed or was refused)."""
    try:
        args, plan = parse(argv)
        if args.device == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        result = run(args, plan)
    except MegaraptrError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    finally:
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    if result["rank"] == 0:
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        print(report(result), flush=True)
    return 1 if any("error" in p for p in result["paths"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
