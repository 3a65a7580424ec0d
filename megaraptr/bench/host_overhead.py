"""Host-overhead benchmark: what a training step costs beyond its compute, path by path.

At one model shape with negligible compute (default: gpt-mini, one sequence of 8 tokens, fp32,
AdamW, clipping 1.0) it builds, in one process, a plain PyTorch loop (k = 0, L/2, L active
layers), plain DeepSpeed (ZeRO 0/1/2, no megaraptr) and megaraptr's engine (ZeRO 0/1/2 at
k = 0, L/2 and in its full-model stage, plus an engine on a model of half the depth in its
full-model stage), and steps them interleaved (each round steps every arm once, the order
reversed every other round), so load on a shared machine falls on all arms alike. Reported:

- per arm, the median step time (wall-clock, and CPU time of the stepping thread, which other
  processes on a busy machine disturb less) with its spread, over ``--steps`` rounds;
- ratios from the same rounds (paired: arm A's step over arm B's in each round), medians and
  quartiles: each ZeRO stage against ZeRO-0, megaraptr against plain DeepSpeed and plain PyTorch;
- the cost of a skipped layer: a k = L/2 step of the L-layer model against the full step of
  the L/2-layer model (the same active layers, the same width), per skipped layer, in time and
  in aten ops dispatched;
- per arm, a per-phase breakdown (forward, backward with DeepSpeed's reduction hooks, the
  reduction epilogue, norm and overflow check, unscale, flatten, optimizer, all-gather,
  zero_grad, megaraptr's own bookkeeping, other) from synchronised timers, in separate rounds;
- per arm, the host syncs per step (``.item()``, data-dependent ops, device-to-host copies,
  synchronize calls; :mod:`megaraptr.bench.host_probe`) and the aten ops dispatched.

The table comes last; ``--out`` writes everything, every sample included, as JSON.

    python -m megaraptr.bench.host_overhead --out host.json
    python -m megaraptr.bench.host_overhead --device cuda --precision bf16 --kernels auto
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import List, Optional

import torch

from megaraptr.bench.host_arms import Shape, build_arm, install_module_phases, install_phases
from megaraptr.bench.host_probe import HostSyncCounter, PhaseClock
from megaraptr.bench.host_report import analyse, report
from megaraptr.errors import ConfigError, MegaraptrError
from megaraptr.models import MODELS, SIZES, num_layers
from megaraptr.planning.step_profile import device_name
from megaraptr.runtime.distributed import init_distributed
from megaraptr.tools.argparsing import OneLineParser, int_list

PROG = "megaraptr-bench-host-overhead"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="gpt")
    p.add_argument("--size", choices=list(SIZES), default="mini")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda if available")
    p.add_argument("--zero", type=int_list, default=[0, 1, 2], help="ZeRO stages (0,1,2)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping (0: none)")
    p.add_argument("--steps", type=int, default=25, help="timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--breakdown-steps", type=int, default=8, help="rounds with phase timers")
    p.add_argument("--no-half-depth", action="store_true",
                   help="leave out the L/2-layer engines (no skipped-layer cost)")
    p.add_argument("--out", default=None, metavar="FILE.json")
    return p


def parse(argv: Optional[List[str]] = None):
    """Arguments, checked; ConfigError (one line, exit 2) before anything is built."""
    args = build_parser().parse_args(argv)
    if any(z not in (0, 1, 2) for z in args.zero) or not args.zero:
        raise ConfigError("--zero", f"{args.zero}: stages 0, 1, 2 (ZeRO-3 and pipelines have "
                          "their own step; not measured here)")
    for name in ("steps", "seq_len", "micro_batch", "vocab_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", "must be at least 1")
    if args.warmup < 0 or args.breakdown_steps < 0:
        raise ConfigError("--warmup/--breakdown-steps", "must be at least 0")
    L = num_layers(args.size)
    if L < 2:
        raise ConfigError("--size", f"{args.size} has {L} layer; need at least 2")
    if args.device is None:
        cpu = os.environ.get("DS_ACCELERATOR") == "cpu" or not torch.cuda.is_available()
        args.device = "cpu" if cpu else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda is not available here; use --device cpu")
    return args


def build_arms(args, shape: Shape) -> list:
    L = shape.num_layers
    ks = sorted({0, L // 2, L})
    arms = [build_arm(shape, "plain", None, k) for k in ks]
    arms += [build_arm(shape, "deepspeed", z, L) for z in args.zero]
    arms += [build_arm(shape, "megaraptr", z, k) for z in args.zero for k in ks]
    if not args.no_half_depth:
        arms += [build_arm(shape, "megaraptr", z, L // 2, depth=L // 2) for z in args.zero]
    return arms


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rounds(arms: list, count: int, device: str, clock: Optional[PhaseClock] = None) -> None:
    """``count`` rounds of one step per arm, every other round in reverse order; each arm's
    ``samples`` (wall ms), ``cpu`` (thread CPU ms) and, with a clock, ``phases`` grow."""
    for r in range(count):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            _sync(device)
            wall, cpu = time.perf_counter(), time.thread_time()
            arm.step()
            _sync(device)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            if clock is None:
                arm.samples.append(wall * 1e3)
                arm.cpu.append(cpu * 1e3)
            else:
                wall_phases, cpu_phases = clock.take(wall, cpu)
                arm.phases.append(wall_phases)
                arm.cpu_phases.append(cpu_phases)


def run(args) -> dict:
    """Build every arm, step them; returns the result (what ``--out`` holds)."""
    import deepspeed

    init_distributed()
    L = num_layers(args.size)
    total = 2 + args.warmup + args.steps + args.breakdown_steps + 2
    shape = Shape(model=args.model, size=args.size, num_layers=L, vocab_size=args.vocab_size,
                  seq_len=args.seq_len, micro_batch=args.micro_batch, precision=args.precision,
                  device=args.device, clip=args.clip, total_steps=total)
    shape.make_batch()
    started = time.time()
    arms = build_arms(args, shape)
    for arm in arms:
        arm.samples, arm.cpu, arm.phases, arm.cpu_phases = [], [], [], []
    rounds(arms, 1 + args.warmup, args.device)  # megaraptr's k = L arms reach their full stage
    for arm in arms:
        arm.samples, arm.cpu = [], []
    rounds(arms, args.steps, args.device)
    clock = PhaseClock(torch.device(args.device))
    install_module_phases(clock)
    for arm in arms:
        install_phases(clock, arm)
    try:
        rounds(arms, args.breakdown_steps, args.device, clock)
    finally:
        clock.remove()
    counter = HostSyncCounter()
    for arm in arms:
        with counter:
            arm.step()
        arm.counts = counter.take()
    result = {"config": dict(vars(args), num_layers=L, tokens_per_step=args.seq_len *
                             args.micro_batch),
              "device": device_name(args.device),
              "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__},
              "seconds": round(time.time() - started, 1),
              "arms": {a.name: {"kind": a.kind, "zero": a.zero, "k": a.k, "depth": a.depth,
                                "samples_ms": a.samples, "cpu_ms": a.cpu,
                                "phases_ms": a.phases, "cpu_phases_ms": a.cpu_phases,
                                "counts": a.counts} for a in arms}}
    for arm in arms:
        destroy = getattr(getattr(arm.engine, "ds", arm.engine), "destroy", None)
        if destroy:
            destroy()
    result["analysis"] = analyse(result)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse(argv)
        if args.device == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        result = run(args)
    except MegaraptrError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(report(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

