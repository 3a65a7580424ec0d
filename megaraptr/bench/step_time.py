"""Step-time benchmark: optimizer-step time against the number of active layers k.

For one model, size, precision and device it measures, in one run, the median step time at
k = 0, L/4, L/2, 3L/4, L active layers (a fresh random subset of exactly k layers each step)
under DeepSpeed+megaraptr at each requested ZeRO stage, and the same model as plain PyTorch
(the ideal: no DeepSpeed, skipped layers get no gradient and no optimizer work). It prints the
fixed and per-layer cost of each path (least squares t(k) = fixed + per_layer * k) and, for a
DeepSpeed path, its overhead against plain PyTorch with the same kernels: the per-layer ratio,
the fixed-cost difference and t(k)/plain(k) at each k; and at each k the speedup t(L)/t(k)
against the path's own ideal (t linear between its own t(k_min) and t(L)), flagging ks off that
line (:mod:`megaraptr.bench.step_metrics`). The JSON (``--out``) holds every sample. The table
comes last. ``--kernels eager,auto`` measures every path once per kernels mode (paths ``zero2``,
``zero2+auto``, ...; compared within a mode), and records the torch.compile graphs each path
made (none while timed).

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
from typing import Callable, Dict, List, Optional

from megaraptr.bench import step_metrics, timing
from megaraptr.bench.step_time_report import path_name, report
from megaraptr.bench.timing import ds_config
from megaraptr.data import make_batches, resolve_data
from megaraptr.errors import ConfigError, MegaraptrError
from megaraptr.kernels import check_mode
from megaraptr.methods import build_schedule, split_ds_config
from megaraptr.models import DATA_KIND, MODELS, SIZES, num_layers
from megaraptr.planning import step_profile
from megaraptr.planning.step_profile import Plan, device_name
from megaraptr.runtime.distributed import init_distributed
from megaraptr.tools.argparsing import OneLineParser, int_list

PROG = "megaraptr-bench-step-time"
# (micro batch, seq len) per size: base/medium as in docs/gpu.md, tiny/mini/narrow CPU-friendly,
# small/slim as in the GPU quality study (megaraptr.bench.gpu_quality).
SHAPES = {"tiny": (8, 128), "mini": (8, 128), "narrow": (8, 128), "small": (256, 128),
          "slim": (256, 128), "base": (64, 512),
          "medium": (16, 1024), "1.3b": (8, 1024), "1.6b": (8, 1024)}


def build_parser() -> argparse.ArgumentParser:

    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="bert")
    p.add_argument("--size", choices=list(SIZES), default="base")
    p.add_argument("--zero", type=int_list, action="append", default=None, metavar="STAGES",
                   help="ZeRO stage(s): repeat or join with commas, e.g. 1,2,3 (default 2)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda if available")
    p.add_argument("--ks", type=int_list, default=None,
                   help="active-layer counts (default 0,L/4,L/2,3L/4,L rounded; L is always added)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per k (cuda 20, cpu 6)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per k (cuda 5, cpu 2)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per rank and step")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--skipped-layers", choices=["freeze", "momentum"], default="freeze")
    p.add_argument("--data", default=None, help="as megaraptr.tools.train (default: built-in sample)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.add_argument("--extra-ds-config", default="{}", metavar="JSON",
                   help="merged into every ds_config, e.g. '{\"gradient_clipping\": 1.0}'")
    p.add_argument("--kernels", default="eager", metavar="MODES",
                   help="kernels modes to measure, joined by commas: eager, fused, compiled, "
                        "auto (default eager); each path runs once per mode")
    p.add_argument("--breakdown", action="store_true", help="also time forward/backward/step "
                   "(synchronizes at each boundary, so totals grow slightly)")
    return p


def parse(argv: Optional[List[str]] = None):
    """Arguments, validated and completed with defaults; (args, plan).

    Raises:
        ConfigError: any bad input, before anything is built.
    """

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
    args.kernels = [check_mode(m.strip(), "--kernels") for m in args.kernels.split(",")
                    if m.strip()] or ["eager"]
    plan = Plan(model=args.model, size=args.size, num_layers=L, ks=sorted(set(ks) | {L}),
                steps=args.steps, warmup=args.warmup, micro_batch=args.micro_batch,
                seq_len=args.seq_len, precision=args.precision, device=args.device,
                skipped_layers=args.skipped_layers, seed=args.seed,
                kernels=args.kernels[0], breakdown=args.breakdown, extra_ds_config=extra)
    args.zero = zero
    for stage in zero:  # the raptr block and schedule, checked the way initialize will
        raptr, _ = split_ds_config(ds_config(plan, stage))
        build_schedule(raptr, num_layers=L, total_steps=plan.total_steps)
    return args, plan


def _medians(entry: dict) -> Dict[int, float]:
    return {int(k): row["median_ms"] for k, row in entry["per_k"].items()}


def compare(entry: dict, plain: Optional[dict], L: int) -> None:
    """Add to a summarized path its speedup against its own ideal at each k and, given its
    plain path, its overhead against plain PyTorch (:mod:`megaraptr.bench.step_metrics`)."""
    rows = step_metrics.per_k(_medians(entry), L, _medians(plain) if plain else None)
    for k, row in rows.items():
        entry["per_k"][str(k)].update({key: row[key] for key in row if key != "median_ms"})
    if plain:
        entry["vs_plain"] = step_metrics.overhead_vs_plain(entry["fit"], plain["fit"])


def run(args, plan, on_path: Optional[Callable[[dict], None]] = None,
        keep_going: Optional[Callable[[str], bool]] = None, record_errors: bool = False) -> dict:
    """Measure the plain path under each kernels mode, then each ZeRO stage (in the order of
    ``args.zero``) under each mode.

    Args:
        args: the parsed arguments (``parse``); ``args.zero`` lists the stages,
            ``args.kernels`` the kernels modes.
        plan: the :class:`~megaraptr.bench.timing.Plan` every path follows (its ``kernels``
            is replaced by each mode in turn).
        on_path: called with the result so far after each path (e.g. to save partial results).
        keep_going: asked before each path (with its name); False records the path as
            skipped (e.g. a time budget is spent).
        record_errors: a path that raises is recorded with its error and the next one runs
            (a ConfigError, megaraptr refusing a configuration, always is).

    Returns:
        The result (what ``--out`` holds), on every rank; rank 0's timings.
    """
    from dataclasses import replace


    data = resolve_data(args.data, kind=DATA_KIND[args.model], vocab_size=args.vocab_size,
                        needed_by=f"--model {args.model}")
    import deepspeed
    import torch
    from deepspeed import comm as dist


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
                  zero=args.zero, tokens_per_step_per_rank=plan.micro_batch * plan.seq_len,
                  kernels_modes=args.kernels)
    versions = {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                "python": platform.python_version()}
    paths: Dict[str, dict] = {}
    result = {"config": config, "device": device_name(args.device), "versions": versions,
              "world_size": world, "rank": rank, "num_layers": plan.num_layers, "ks": plan.ks,
              "paths": paths}
    order = [(None, m) for m in args.kernels] + [(z, m) for z in args.zero for m in args.kernels]
    for stage, mode in order:
        name = path_name("plain" if stage is None else f"zero{stage}", mode)
        head = {"kind": "plain" if stage is None else "deepspeed", "kernels_mode": mode}
        if stage is not None:
            head["zero_stage"] = stage
        plain = paths.get(path_name("plain", mode), {})
        if keep_going is not None and not keep_going(name):
            paths[name] = dict(head, error="skipped: time budget spent")
            continue
        if stage is not None and "error" in plain:
            paths[name] = dict(head, error="skipped: its plain path was not measured")
            continue
        mode_plan = replace(plan, kernels=mode)
        dist.barrier()
        try:
            if stage is None:
                raw = step_profile.run_plain(mode_plan, batches, data.vocab_size, device)
            else:
                raw = timing.run_deepspeed(mode_plan, stage, batches, data.vocab_size, device)
        except Exception as err:  # ConfigError: e.g. a stage or kernels refused there
            if not (isinstance(err, ConfigError) or record_errors):
                raise
            step_profile.release(device)
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            paths[name] = dict(head, error=message if isinstance(err, ConfigError) else
                               f"failed: {type(err).__name__}: {message}"[:300])
            continue
        entry = dict(step_profile.summarize(raw, plan.num_layers), **head)
        compare(entry, plain if stage is not None else None, plan.num_layers)
        if stage is not None:
            entry["ds_config"] = timing.ds_config(mode_plan, stage)
        paths[name] = entry
        if on_path:
            on_path(result)
    return result


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
