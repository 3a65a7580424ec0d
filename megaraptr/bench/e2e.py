"""End-to-end wall-clock of RAPTR against full-model training at equal steps, on real tokens.

The same model from the same initialisation trains on the same batches under
DeepSpeed+megaraptr, with the same kernels: ``full`` (raptr disabled, the same code path) and
``raptr`` (a schedule such as ``6-8-10-12``, equal stages, megaraptr's defaults), in ``--pairs``
pairs whose order alternates (full then RAPTR, RAPTR then full, ...), each run with a fresh
engine. Each run's training loop is timed as a whole (``engine.train_step`` per step, which
returns the loss to the host); the batches are made before the loop and sit on the device, as a
prefetching loader would have them. A short untimed warm-up engine runs first, so compilation
of the blocks is not in any run.

The ideal comes from the same run: plain PyTorch (no DeepSpeed, the same model, batches,
kernels and precision) is timed at k = 0, L/2 and L active layers, and the ideal speedup is
t(L) / the mean of t(k) over the RAPTR run's steps, with t read off the measured points
(linear between them) and, beside it, off their least-squares line
(:func:`megaraptr.bench.step_metrics.ideal_speedup`). Reported: per pair the speedup full /
RAPTR and achieved / ideal; their median, min and max; every step time of every run (JSON).

    python -m megaraptr.bench.e2e --data .gpudata/bert-mlm --size base --steps 300 --out e2e.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import List, Optional

import torch

import megaraptr
from megaraptr.bench import step_metrics
from megaraptr.data import make_batches, resolve_data
from megaraptr.kernels import dynamo_counts
from megaraptr.models import DATA_KIND, build_model, num_layers, optimizer_groups
from megaraptr.planning import step_profile
from megaraptr.planning.step_profile import Plan, fit_line, release
from megaraptr.runtime.distributed import init_distributed

SHAPES = {"tiny": (8, 64), "mini": (8, 128), "base": (64, 512), "medium": (16, 1024)}


def ideal_speedup(fixed: float, per_layer: float, L: int, mean_layers: float) -> float:
    """t(L) / t(mean k) for t(k) = fixed + per_layer * k (t is linear, so the mean step time
    over a schedule is t at its mean active depth)."""
    return (fixed + per_layer * L) / (fixed + per_layer * mean_layers)


def ds_config(args, raptr: dict) -> dict:
    """The DeepSpeed config of one run: AdamW with warmup and decay, bf16, ZeRO stage."""
    config = {
        "train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False,
        "optimizer": {"type": "AdamW", "params": {"lr": args.lr, "betas": [0.9, 0.98],
                                                  "eps": 1e-6, "weight_decay": 0.01,
                                                  "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0, "warmup_max_lr": args.lr, "total_num_steps": args.steps,
            "warmup_num_steps": max(1, args.steps // 10)}},
        "zero_optimization": {"stage": args.zero},
        "raptr": dict(raptr, kernels=args.kernels, seed=args.seed,
                      consistency_check_interval=0),
    }
    if args.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def train(args, name: str, raptr: dict, batches: List[dict], steps: int, vocab: int) -> dict:
    """One run of ``steps`` steps; returns its timings, layers, losses and kernels."""

    torch.manual_seed(args.seed)
    model = build_model(args.model, args.size, vocab_size=vocab, seq_len=args.seq_len)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(args, raptr), total_steps=steps,
                                      seed=args.seed)
    graphs = dynamo_counts()["unique_graphs"]
    times, layers, losses = [], [], []
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    sync()
    loop_start = time.perf_counter()
    for step in range(1, steps + 1):
        start = time.perf_counter()
        result = engine.train_step([batches[(step - 1) % len(batches)]])
        times.append((time.perf_counter() - start) * 1e3)
        layers.append(result.mask.num_active)
        losses.append(result.loss)
    sync()
    loop_s = time.perf_counter() - loop_start
    out = {"name": name, "steps": steps, "loop_s": loop_s, "step_ms": times,
           "active_layers": layers, "loss": losses, "kernels": engine.kernels,
           "graphs_compiled_in_loop": dynamo_counts()["unique_graphs"] - graphs,
           "mean_active_layers": sum(layers) / steps,
           "expected_layer_fraction": engine.schedule.expected_flops_fraction(),
           "final_loss_mean20": statistics.fmean(losses[-20:])}
    engine.ds.destroy()
    del engine, model
    release(torch.device(args.device))
    return out


def fit_steps(wanted: int, step_ms: float, seconds_left: float, setup_s: float = 15.0,
              pairs: int = 1) -> int:
    """Steps per run that fit ``pairs`` pairs of runs (full at ``step_ms``, RAPTR faster) into
    ``seconds_left``, with ``setup_s`` per run for building engines; at most ``wanted``."""
    per_step = step_ms / 1e3 * 1.9 * pairs  # a full step plus a RAPTR step (<= 0.9 of it)
    room = seconds_left - 2 * pairs * setup_s
    return max(20, min(wanted, int(room / per_step))) if per_step > 0 else wanted


def plain_costs(args, source, vocab: int) -> dict:
    """Plain PyTorch with the run's model, batches, kernels and precision at k = 0, L/2, L:
    per-k medians (ms), every sample, and the least-squares line."""
    L = num_layers(args.size)
    plan = Plan(model=args.model, size=args.size, num_layers=L, ks=sorted({0, L // 2, L}),
                steps=args.plain_steps, warmup=args.plain_warmup, micro_batch=args.micro_batch,
                seq_len=args.seq_len, precision=args.precision, device=args.device,
                seed=args.seed, kernels=args.kernels)
    summary = step_profile.summarize(step_profile.run_plain(plan, source, vocab,
                                                            torch.device(args.device)), L)
    return {"points_ms": {k: row["median_ms"] for k, row in summary["per_k"].items()},
            "samples_ms": {k: row["samples_ms"] for k, row in summary["per_k"].items()},
            "fit": summary["fit"], "kernels": summary.get("kernels")}


def run(args, deadline: Optional[float] = None) -> dict:
    """Warm up, then train full and RAPTR; returns the result (what ``--out`` holds).

    With a ``deadline`` (Unix time), the warm-up's step time decides whether ``args.steps``
    fit before it; if not, both runs train fewer (equal) steps, noted as ``steps_reduced``."""

    data = resolve_data(args.data, kind=DATA_KIND[args.model], vocab_size=8192)
    init_distributed()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(0)
    source = make_batches(data, seq_len=args.seq_len, micro_batch_size=args.micro_batch,
                          seed=args.seed)
    made = time.perf_counter()
    batches = [{k: v.to(device) for k, v in source.step_batches(step)[0].items()}
               for step in range(1, args.steps + 1)]
    made = time.perf_counter() - made
    result = {"config": {k: v for k, v in vars(args).items() if k != "out"},
              "vocab_size": data.vocab_size, "num_layers": num_layers(args.size),
              "batches_seconds": made}
    if args.warmup:
        start = time.perf_counter()
        warm = train(args, "warmup", {"enabled": False}, batches, args.warmup, data.vocab_size)
        result["warmup_seconds"] = time.perf_counter() - start
    result["plain"] = plain_costs(args, source, data.vocab_size)
    if args.warmup >= 2 and deadline is not None:
        steps = fit_steps(args.steps, statistics.median(warm["step_ms"][1:]),
                          deadline - time.time(), pairs=args.pairs)
        if steps < args.steps:
            result["steps_reduced"] = {"from": args.steps, "to": steps}
            args.steps = steps
    arms = (("full", {"enabled": False}), ("raptr", {"enabled": True, "schedule": args.schedule}))
    result["runs"] = []
    for pair in range(args.pairs):  # the order alternates: a drift in the machine hits both
        for name, raptr in (arms if pair % 2 == 0 else arms[::-1]):
            entry = train(args, name, raptr, batches, args.steps, data.vocab_size)
            result["runs"].append(dict(entry, pair=pair))
    summarize(result)
    return result


def summarize(result: dict) -> dict:
    """Add per-pair speedups, the ideal from the same run's plain costs, achieved / ideal,
    and the RAPTR runs' own t(k) fit to ``result``."""
    L = result["num_layers"]
    pairs = sorted({r["pair"] for r in result["runs"]})
    by = {(r["pair"], r["name"]): r for r in result["runs"]}
    full, raptr = by[(0, "full")], by[(0, "raptr")]
    points = {int(k): v for k, v in result["plain"]["points_ms"].items()}
    ideal = step_metrics.ideal_speedup(points, L, raptr["active_layers"])
    speedups = [by[(p, "full")]["loop_s"] / by[(p, "raptr")]["loop_s"] for p in pairs]
    achieved = [s / ideal["from_points"] for s in speedups]
    skip = min(3, full["steps"] - 1)  # the first steps pay one-off costs (allocations)
    fit = fit_line(raptr["active_layers"][skip:], raptr["step_ms"][skip:])
    result["summary"] = {
        "pairs": len(pairs), "speedups": speedups, "speedup": step_metrics.spread(speedups),
        "ideal": ideal["from_points"], "ideal_from_line": ideal["from_line"],
        "achieved_over_ideal": achieved,
        "achieved_over_ideal_spread": step_metrics.spread(achieved),
        "full_ms_per_step": step_metrics.spread([by[(p, "full")]["loop_s"] * 1e3 /
                                                 full["steps"] for p in pairs]),
        "raptr_ms_per_step": step_metrics.spread([by[(p, "raptr")]["loop_s"] * 1e3 /
                                                  raptr["steps"] for p in pairs]),
        "mean_active_layers": raptr["mean_active_layers"],
        "expected_active_layers": raptr["expected_layer_fraction"] * L,
        "plain_fit": result["plain"]["fit"], "raptr_fit": fit,
        "ideal_from_own_fit": ideal_speedup(fit["fixed_ms"], fit["per_layer_ms"], L,
                                            raptr["mean_active_layers"]),
        "loss_full_last20": full["final_loss_mean20"],
        "loss_raptr_last20": raptr["final_loss_mean20"]}
    return result["summary"]


def parse(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(prog="megaraptr-bench-e2e", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["bert", "gpt"], default="bert")
    p.add_argument("--size", choices=list(SHAPES), default="base")
    p.add_argument("--data", default=None, help="prepared data (default: the built-in sample)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=4, help="steps of an untimed warm-up engine")
    p.add_argument("--pairs", type=int, default=3, help="full/RAPTR pairs, order alternating")
    p.add_argument("--plain-steps", type=int, default=8,
                   help="timed plain-PyTorch steps per k for the ideal")
    p.add_argument("--plain-warmup", type=int, default=3)
    p.add_argument("--schedule", default="6-8-10-12")
    p.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3])
    p.add_argument("--kernels", default="auto", choices=["eager", "fused", "compiled", "auto"])
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=None, metavar="FILE.json")
    p.add_argument("--deadline", type=float, default=None,
                   help="Unix time: train fewer steps if the full count would not fit")
    args = p.parse_args(argv)
    if args.device is None:
        cpu = os.environ.get("DS_ACCELERATOR") == "cpu" or not torch.cuda.is_available()
        args.device = "cpu" if cpu else "cuda"
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    batch, seq = SHAPES[args.size]
    args.micro_batch, args.seq_len = args.micro_batch or batch, args.seq_len or seq
    if args.steps < 4:
        p.error("--steps: at least 4")
    if args.pairs < 1 or args.plain_steps < 1 or args.plain_warmup < 0:
        p.error("--pairs and --plain-steps: at least 1; --plain-warmup: at least 0")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        result = run(args, deadline=args.deadline)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(line(result["summary"]), flush=True)
    return 0


def line(s: dict) -> str:
    """One line: the pairs' speedups with their spread against the ideal."""
    sp, ach = s["speedup"], s["achieved_over_ideal_spread"]
    return (f"full {s['full_ms_per_step']['median']:.1f} ms/step, raptr "
            f"{s['raptr_ms_per_step']['median']:.1f} ms/step ({s['mean_active_layers']:.2f} "
            f"layers on average), {s['pairs']} pairs: speedup {sp['median']:.3f}x "
            f"[{sp['min']:.3f}-{sp['max']:.3f}]; ideal {s['ideal']:.3f}x from this run's plain "
            f"PyTorch t(k) ({s['ideal_from_line']:.3f}x from its line); achieved/ideal "
            f"{ach['median']:.3f} [{ach['min']:.3f}-{ach['max']:.3f}]")


if __name__ == "__main__":
    sys.exit(main())
