"""End-to-end wall-clock of RAPTR against full-model training at equal steps, on real tokens.

The same model from the same initialisation trains twice on the same batches under
DeepSpeed+megaraptr, with the same kernels: ``full`` (raptr disabled, the same code path) and
``raptr`` (a schedule such as ``6-8-10-12``, equal stages, megaraptr's defaults). Each run's
training loop is timed as a whole (``engine.train_step`` per step, which returns the loss to
the host); the batches are made before the loop and sit on the device, as a prefetching loader
would have them. A short untimed warm-up engine runs first, so compilation of the blocks is
not in either run. Reported: the wall-clock speedup full / raptr, each run's per-step times
with its layers that ran, the least-squares t(k) = fixed + per_layer * k of the RAPTR run, and
the speedup that fit predicts (the ideal from DeepSpeed's own costs).
``megaraptr.bench.gpu`` adds the ideal from the plain-PyTorch costs.

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
from megaraptr.data import make_batches, resolve_data
from megaraptr.kernels import dynamo_counts
from megaraptr.models import DATA_KIND, build_model, num_layers, optimizer_groups
from megaraptr.planning.step_profile import fit_line, release
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


def fit_steps(wanted: int, step_ms: float, seconds_left: float, setup_s: float = 15.0) -> int:
    """Steps per run that fit two runs (full at ``step_ms``, RAPTR faster) into
    ``seconds_left``, with ``setup_s`` per run for building engines; at most ``wanted``."""
    per_step = step_ms / 1e3 * 1.9  # a full step plus a RAPTR step (<= 0.9 of it)
    room = seconds_left - 2 * setup_s
    return max(20, min(wanted, int(room / per_step))) if per_step > 0 else wanted


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
              "batches_seconds": made, "runs": {}}
    if args.warmup:
        start = time.perf_counter()
        warm = train(args, "warmup", {"enabled": False}, batches, args.warmup, data.vocab_size)
        result["warmup_seconds"] = time.perf_counter() - start
        if deadline is not None and args.warmup >= 2:
            steps = fit_steps(args.steps, statistics.median(warm["step_ms"][1:]),
                              deadline - time.time())
            if steps < args.steps:
                result["steps_reduced"] = {"from": args.steps, "to": steps}
                args.steps = steps
    for name, raptr in (("full", {"enabled": False}),
                        ("raptr", {"enabled": True, "schedule": args.schedule})):
        result["runs"][name] = train(args, name, raptr, batches, args.steps, data.vocab_size)
    summarize(result)
    return result


def summarize(result: dict) -> dict:
    """Add speedups and the RAPTR run's own t(k) fit and ideal to ``result``."""
    full, raptr, L = result["runs"]["full"], result["runs"]["raptr"], result["num_layers"]
    skip = min(3, full["steps"] - 1)  # the first steps pay one-off costs (allocations)
    fit = fit_line(raptr["active_layers"][skip:], raptr["step_ms"][skip:])
    result["summary"] = {
        "speedup": full["loop_s"] / raptr["loop_s"],
        "speedup_after_first_steps": sum(full["step_ms"][skip:]) / sum(raptr["step_ms"][skip:]),
        "full_ms_per_step": full["loop_s"] * 1e3 / full["steps"],
        "raptr_ms_per_step": raptr["loop_s"] * 1e3 / raptr["steps"],
        "mean_active_layers": raptr["mean_active_layers"],
        "expected_active_layers": raptr["expected_layer_fraction"] * L,
        "raptr_fit": fit,
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
    s = result["summary"]
    print(f"full {s['full_ms_per_step']:.1f} ms/step, raptr {s['raptr_ms_per_step']:.1f} ms/step "
          f"({s['mean_active_layers']:.2f} layers on average): speedup {s['speedup']:.3f}x, "
          f"ideal from the run's own t(k) {s['ideal_from_own_fit']:.3f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
