"""Quality benchmark: several training methods on the same model, data and LR schedule.

    python -m megaraptr.bench.quality --out runs/quality --model gpt --size narrow \
        --data my_corpus/ --vocab-size 2048 --horizons 1,5,20 \
        --methods full,full-matched,raptr,pld,layerdrop,stacking [--ablations] --parallel 2

For every horizon h (tokens per non-embedding parameter) and every method it trains the same
model with ``megaraptr.tools.train`` (same seed, same data order, AdamW with warmup + cosine decay over
the run), evaluates the full model on held-out text at ``--evals`` points, and writes:

- ``OUT/h{h}/{method}/``: the run's ds_config, log, summary and checkpoints;
- ``OUT/tensorboard/h{h}-{method}``: its TensorBoard run;
- ``OUT/quality_h{h}.png`` (eval loss against steps, wall-clock and layer FLOPs) and
  ``OUT/report.md`` (final loss, FLOPs, wall-clock, loss at equal wall-clock and equal FLOPs).

Held-out text: the data's val split, or any text/jsonl file given as ``--eval-data``. The sweep
resumes: a finished run (its summary says so) is skipped, an interrupted one continues from its
last checkpoint (``--checkpoints`` per run). ``--parallel P`` runs P trainings at once, each on
its own cores (``taskset``), so side-by-side wall-clock stays comparable. Methods and ablations
are defined in :mod:`megaraptr.bench.methods`; the report in :mod:`megaraptr.bench.report`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

from megaraptr.bench.methods import ABLATIONS, METHODS, Run, plan_runs
from megaraptr.bench.report import write_report
from megaraptr.data import resolve_data
from megaraptr.data.cache import prepare_cached
from megaraptr.data.resolve import SAMPLE_DIR
from megaraptr.errors import ConfigError, MegaraptrError
from megaraptr.models import DATA_KIND, MODELS, SIZES
from megaraptr.tools.argparsing import OneLineParser

PROG = "megaraptr-bench-quality"


def _floats(text: str) -> List[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers joined by commas, got {text!r}")
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _names(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:

    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (resumable)")
    p.add_argument("--model", choices=sorted(MODELS), default="gpt")
    p.add_argument("--size", choices=list(SIZES), default="narrow")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="raw text/jsonl files or folders, or a prepared folder (default: the "
                        "built-in sample)")
    p.add_argument("--eval-data", metavar="FILE", default=None,
                   help="held-out text/jsonl file (default: the data's val split)")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3,
                   help="peak LR of every method (2e-3: the best of 1e-3, 2e-3, 4e-3 for the "
                        "full narrow model)")
    p.add_argument("--warmup", type=float, default=0.05, help="LR warmup, fraction of the run")
    p.add_argument("--horizons", type=_floats, default=[1.0, 5.0, 20.0],
                   help="tokens per non-embedding parameter, joined by commas")
    p.add_argument("--steps", type=int, default=None,
                   help="one run length in steps instead of --horizons (smoke tests)")
    p.add_argument("--methods", type=_names, default=["full", "full-matched", "raptr", "pld",
                                                      "layerdrop", "stacking"])
    p.add_argument("--ablations", action="store_true",
                   help=f"add the RAPTR ablations at the longest horizon: {', '.join(ABLATIONS)}")
    p.add_argument("--evals", type=int, default=20, help="evaluations per run (plus step 0)")
    p.add_argument("--eval-sequences", type=int, default=128)
    p.add_argument("--checkpoints", type=int, default=4, help="checkpoints per run, for resume")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once, one core set each")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--report-only", action="store_true", help="write the report, train nothing")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS and m not in ABLATIONS]
    if unknown:
        raise ConfigError("--methods", f"unknown method {unknown[0]!r}; allowed: "
                          f"{', '.join(METHODS)} or an ablation ({', '.join(ABLATIONS)})")
    for name in ("vocab_size", "seq_len", "micro_batch", "evals", "eval_sequences", "parallel",
                 "checkpoints"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", "must be at least 1")
    if importlib.util.find_spec("matplotlib") is None:  # before any training, not after
        raise ConfigError("matplotlib", "the benchmark's plots need it; allowed: pip install "
                          "'megaraptr[bench]' (or matplotlib) first")
    if not 0 <= args.warmup < 1:
        raise ConfigError("--warmup", f"must be in [0, 1), got {args.warmup}")
    for path in (args.data, args.eval_data):
        if path is not None and not os.path.exists(path):
            raise ConfigError("--data" if path == args.data else "--eval-data",
                              f"{path}: no such file or directory")
    return args


def prepared_data_path(args) -> str:
    """Prepare (or find in the cache) the data once, so every run reads the same shards."""

    kind = DATA_KIND[args.model]
    if args.eval_data is None:
        data = resolve_data(args.data, kind=kind, vocab_size=args.vocab_size)
    else:

        data = prepare_cached(args.data or SAMPLE_DIR, kind=kind, vocab_size=args.vocab_size,
                              val_inputs=args.eval_data)
    return str(data.path)


def run_command(run: Run, data: str, args) -> List[str]:
    cmd = [sys.executable, "-m", "megaraptr.train", "--deepspeed_config", run.config_path,
           "--model", args.model, "--size", args.size, "--data", data,
           "--seq-len", str(args.seq_len), "--train-steps", str(run.steps),
           "--eval-interval", str(run.eval_interval), "--eval-sequences", str(args.eval_sequences),
           "--seed", str(args.seed), "--summary", run.summary_path,
           "--save", run.checkpoint_dir, "--save-interval", str(run.save_interval)]
    if os.path.isfile(os.path.join(run.checkpoint_dir, "latest")):
        cmd += ["--load", run.checkpoint_dir]
    return cmd


@dataclass
class Running:
    run: Run
    proc: subprocess.Popen
    started: float
    cores: str


def _progress(run: Run) -> str:
    try:
        with open(run.log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(run.log_path) - 4000))
            tail = f.read().decode(errors="replace")
    except OSError:
        return "starting"
    found = re.findall(r"(\d+)/(\d+) \[", tail)
    return f"step {found[-1][0]}/{found[-1][1]}" if found else "starting"


def _cores(slot: int, parallel: int) -> str:
    count = os.cpu_count() or 1
    per = max(1, count // parallel)
    first = (slot * per) % count
    return f"{first}-{first + per - 1}" if per > 1 else str(first)


def train_all(runs: List[Run], data: str, args) -> List[Run]:
    """Run what is not finished, ``--parallel`` at a time; returns the runs that failed."""
    todo = [r for r in runs if not r.finished()]
    print(f"{PROG}: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
          f"{len(todo)} to train, {args.parallel} at a time", flush=True)
    running: List[Optional[Running]] = [None] * args.parallel
    failed, done, last_report = [], len(runs) - len(todo), 0.0
    taskset = shutil.which("taskset") if args.parallel > 1 else None
    while todo or any(running):
        for slot, item in enumerate(running):
            if item is not None and item.proc.poll() is not None:
                ok = item.proc.returncode == 0 and item.run.finished()
                done += 1
                summary = item.run.summary() if ok else {}
                status = (f"eval loss {summary['final_eval_loss']:.4f}, layer FLOPs "
                          f"{summary['layer_flops_fraction']:.3f}, {summary['wall_seconds']:.0f} s"
                          if ok else f"FAILED (exit {item.proc.returncode}), see {item.run.log_path}")
                print(f"[{done}/{len(runs)}] {item.run.label}: {status}", flush=True)
                if not ok:
                    failed.append(item.run)
                running[slot] = item = None
            if item is None and todo:
                run = todo.pop(0)
                cores = _cores(slot, args.parallel)
                cmd = run_command(run, data, args)
                if taskset:
                    cmd = [taskset, "-c", cores] + cmd
                threads = str(max(1, (os.cpu_count() or 1) // args.parallel))
                env = dict(os.environ, OMP_NUM_THREADS=threads, DS_ACCELERATOR="cpu",
                           TOKENIZERS_PARALLELISM="false") if args.parallel > 1 else os.environ
                log = open(run.log_path, "a")
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[slot] = Running(run, proc, time.time(), cores)
                print(f"{PROG}: start {run.label} ({run.steps} steps) on cores {cores}", flush=True)
        if time.time() - last_report > 60:
            last_report = time.time()
            active = [f"{r.run.label} {_progress(r.run)}" for r in running if r]
            if active:
                print(f"{PROG}: running: {'; '.join(active)}; {len(todo)} waiting", flush=True)
        time.sleep(1.0)
    return failed


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        data = prepared_data_path(args)
        runs = plan_runs(args, data)
        failed = [] if args.report_only else train_all(runs, data, args)

        path = write_report(runs, args)
    except MegaraptrError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print(f"{PROG}: report {path}", flush=True)
    if failed:
        print(f"{PROG}: {len(failed)} run(s) failed: {', '.join(r.label for r in failed)}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
