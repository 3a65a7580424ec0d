"""The whole method benchmarked on one GPU in one command (``bash launch/gpu_check.sh``).

Parts, each a subprocess with its own deadline (so a hang cannot eat the budget), in order:

1. ``bert``: the Triton residual add checked and timed (:mod:`megaraptr.bench.kernel_check`),
   then the step-time benchmark of BERT-base (12 x 768, masked MLM head, seq 512, batch 64) at
   k = 0, 6, 12 for plain PyTorch and ZeRO-2, ZeRO-1, ZeRO-3, each with ``eager`` and
   ``auto`` kernels (compiled blocks, or fused ones under ZeRO-3), bf16;
2. ``e2e``: RAPTR 6-8-10-12 against the full model in three pairs of ~200 steps each, the
   order alternating (full first, then RAPTR first, ...), BERT-base, auto kernels, real tokens,
   with the ideal from the same process's plain-PyTorch t(k) at the same kernels
   (:mod:`megaraptr.bench.e2e`), under ZeRO-2 or ZeRO-1, whichever part 1 found faster at the
   schedule's mean depth (3/4 of the layers);
3. ``host``: the host-overhead benchmark (:mod:`megaraptr.bench.host_overhead`: gpt-mini, one
   sequence of 8 tokens, bf16; plain PyTorch, plain DeepSpeed and megaraptr at ZeRO 0/1/2 side
   by side, with host syncs per step);
4. ``gpt``: the step-time benchmark of GPT-medium (24 x 1024, seq 1024, batch 16) at k = 0,
   12, 24, as in part 1.

Every part writes JSON under ``--out`` as it goes (a part cut short keeps what it measured);
this driver then writes ``gpu_bench.json`` (the summary, with every target) beside the parts'
per-sample JSON (``bert.json``, ``e2e.json``, ``host.json``, ``gpt.json``) and prints a short
table last. Commit all five (docs/gpu/<card>-<date>/): every figure in docs/ comes from one. Data: the pre-tokenized slice
in ``.gpudata/`` (:mod:`megaraptr.bench.gpu_data`); the built-in sample when it is missing.

    python -m megaraptr.bench.gpu --out out                     # GPU, about 5-6 minutes
    python -m megaraptr.bench.gpu --out /tmp/gb --dry-run       # CPU, tiny sizes, a minute
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from megaraptr.bench import e2e, host_overhead, kernel_check, step_time
from megaraptr.bench.gpu_report import summarize, table

PARTS = ("bert", "e2e", "host", "gpt")
# per part: at most this many seconds; and the seconds kept for it while earlier parts run
CAPS = {"bert": (150, 60), "e2e": (200, 150), "host": (90, 60), "gpt": (600, 30)}
GPU = {"bert": dict(model="bert", size="base", ks="0,6,12", data="bert-mlm"),
       "gpt": dict(model="gpt", size="medium", ks="0,12,24", data="gpt-causal"),
       "steps": 8, "warmup": 3, "e2e_steps": 200, "pairs": 3, "schedule": "6-8-10-12"}
DRY = {"bert": dict(model="bert", size="tiny", ks="0,2,4", data="bert-mlm",
                    extra=["--micro-batch", "4", "--seq-len", "32"]),
       "gpt": dict(model="gpt", size="tiny", ks="0,2,4", data="gpt-causal",
                   extra=["--micro-batch", "4", "--seq-len", "32"]),
       "steps": 2, "warmup": 1, "e2e_steps": 12, "pairs": 3, "schedule": "2-3-4",
       "e2e_extra": ["--micro-batch", "4", "--seq-len", "32"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megaraptr-bench-gpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"), help="results folder")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, fp32")
    p.add_argument("--parts", default=",".join(PARTS), help="which parts, joined by commas")
    p.add_argument("--zero", default="2,1,3", help="ZeRO stages, in the order measured")
    p.add_argument("--budget", type=float, default=390.0, help="seconds for all parts")
    p.add_argument("--deadline", type=float, default=None,
                   help="Unix time by which everything ends (overrides --budget)")
    p.add_argument("--data-dir", default=".gpudata")
    p.add_argument("--part", choices=PARTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--e2e-kernels", default="auto", help=argparse.SUPPRESS)
    return p


def _data(args, name: str) -> List[str]:
    path = Path(args.data_dir) / name
    return ["--data", str(path)] if (path / "index.json").is_file() else []


def step_time_argv(args, part: str) -> List[str]:
    preset = (DRY if args.dry_run else GPU)
    shape = preset[part]
    argv = ["--model", shape["model"], "--size", shape["size"], "--ks", shape["ks"],
            "--zero", args.zero, "--kernels", "eager,auto", "--steps", str(preset["steps"]),
            "--warmup", str(preset["warmup"]), *shape.get("extra", []), *_data(args, shape["data"])]
    if args.dry_run:
        argv += ["--device", "cpu", "--precision", "fp32"]
    else:
        argv += ["--device", "cuda", "--precision", "bf16"]
    return argv


def run_step_time_part(args, part: str, deadline: float) -> None:
    """Worker: (bert) the kernel check, then the step-time paths; JSON after each path."""

    out = Path(args.out) / f"{part}.json"
    extra = {"kernel_check": kernel_check.check("cpu" if args.dry_run else "cuda")} \
        if part == "bert" else {}

    def save(result: dict) -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(result, **extra), indent=1))
        os.replace(tmp, out)

    cli, plan = step_time.parse(step_time_argv(args, part))
    cli.zero = [int(z) for z in args.zero.split(",")]  # measured in this order
    result = step_time.run(cli, plan, on_path=save, record_errors=True,
                           keep_going=lambda name: deadline - time.time() > 15)
    save(result)


def best_zero_stage(out: Path) -> int:
    """ZeRO-1 or ZeRO-2, whichever part 1's auto-kernel fit makes faster at 3/4 of the
    layers (the mean depth of 6-8-10-12); 2 without a measurement."""
    try:
        result = json.loads((out / "bert.json").read_text())
    except (OSError, ValueError):
        return 2
    times = []
    for stage in (2, 1):
        entry = result["paths"].get(f"zero{stage}+auto", {})
        if "fit" in entry:
            fit = entry["fit"]
            times.append((fit["fixed_ms"] + fit["per_layer_ms"] * 0.75 * result["num_layers"],
                          stage))
    return min(times)[1] if times else 2


def run_host_part(args) -> None:
    """Worker: the host-overhead benchmark (tiny on a dry run)."""
    argv = ["--out", str(Path(args.out) / "host.json"), "--steps", "15", "--warmup", "2",
            "--breakdown-steps", "4"]
    argv += ["--device", "cpu", "--size", "tiny", "--vocab-size", "128", "--steps", "2",
             "--warmup", "1", "--breakdown-steps", "1", "--zero", "0,1"] \
        if args.dry_run else ["--device", "cuda", "--precision", "bf16"]
    host_overhead.main(argv)


def run_e2e_part(args, deadline: float) -> None:

    preset = DRY if args.dry_run else GPU
    argv = ["--model", "bert", "--size", preset["bert"]["size"], "--steps",
            str(preset["e2e_steps"]), "--pairs", str(preset["pairs"]),
            "--schedule", preset["schedule"],
            "--zero", str(best_zero_stage(Path(args.out))),
            "--kernels", args.e2e_kernels, "--out", str(Path(args.out) / "e2e.json"),
            "--deadline", f"{deadline:.0f}",
            *preset.get("e2e_extra", []), *_data(args, "bert-mlm")]
    argv += ["--device", "cpu", "--precision", "fp32"] if args.dry_run else \
        ["--device", "cuda", "--precision", "bf16"]
    e2e.main(argv)


def run_part(args, part: str, deadline: float, *, kernels: str = "auto") -> dict:
    """Driver: run one part as a subprocess under a timeout; returns its status."""
    cmd = [sys.executable, "-m", "megaraptr.bench.gpu", "--part", part, "--out", args.out,
           "--zero", args.zero, "--deadline", f"{deadline:.0f}", "--data-dir", args.data_dir,
           "--e2e-kernels", kernels]
    cmd += ["--dry-run"] if args.dry_run else []
    limit = max(1, int(deadline - time.time()))
    start = time.time()
    name = part if kernels == "auto" else f"{part}-{kernels}"
    with open(Path(args.out) / f"{name}.log", "w") as log:
        proc = subprocess.run(["timeout", "-k", "5", str(limit), *cmd], stdout=log,
                              stderr=subprocess.STDOUT)
    status = {"rc": proc.returncode, "seconds": round(time.time() - start, 1),
              "limit_s": limit, "timed_out": proc.returncode in (124, 137)}
    print(f"part {name}: rc {proc.returncode}, {status['seconds']} s (limit {limit} s)",
          flush=True)
    return status


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    deadline = args.deadline or start + args.budget
    os.makedirs(args.out, exist_ok=True)
    if args.dry_run:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.part:  # worker
        if args.part == "e2e":
            run_e2e_part(args, deadline - 5)
        elif args.part == "host":
            run_host_part(args)
        else:
            run_step_time_part(args, args.part, deadline - 3)
        return 0

    parts = [p for p in args.parts.split(",") if p]
    status = {}
    for i, part in enumerate(parts):
        later = sum(CAPS[p][1] for p in parts[i + 1:])
        part_deadline = min(time.time() + CAPS[part][0], deadline - later)
        if part_deadline - time.time() < 20:
            status[part] = {"rc": None, "skipped": "time budget spent"}
            continue
        status[part] = run_part(args, part, part_deadline)
        if part == "e2e" and status[part]["rc"] != 0 and \
                not (Path(args.out) / "e2e.json").exists() and \
                deadline - later - time.time() >= 60:  # e.g. compiling failed: fused blocks
            retry = min(time.time() + CAPS[part][0], deadline - later)
            status[part] = dict(run_part(args, part, retry, kernels="fused"),
                                first_try=status[part])
    summary = summarize(Path(args.out), status, elapsed=time.time() - start,
                        command=" ".join(sys.argv))
    (Path(args.out) / "gpu_bench.json").write_text(json.dumps(summary, indent=1))
    print(table(summary), flush=True)
    return 0 if all(s.get("rc") == 0 for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
