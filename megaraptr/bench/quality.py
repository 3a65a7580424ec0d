"""Quality benchmark: several training methods on the same model, data and LR schedule.

    python -m megaraptr.bench.quality --out runs/quality --model gpt --size narrow \
        --data my_corpus/ --vocab-size 2048 --horizons 1,5,20 \
        --methods full,full-matched,raptr,pld,layerdrop,stacking [--ablations] --parallel 2

For every horizon h (tokens per non-embedding parameter) and every method it trains the same
model with ``megaraptr.tools.train`` (same seed, same data order, AdamW with warmup + cosine
decay over each run's own length), evaluates the full model on held-out text at ``--evals``
points, and writes:

- ``OUT/h{h}/{method}/``: the run's ds_config, log, summary and checkpoints;
- ``OUT/tensorboard/h{h}-{method}``: its TensorBoard run;
- ``OUT/quality_h{h}.png`` (val loss against steps, wall-clock and total FLOPs),
  ``OUT/report.md`` (equal-steps, equal-FLOPs and equal-wall-clock tables of finished runs)
  and ``OUT/runs.json`` (every finished run's record).

Held-out text: the data's val split, and beside it (a column of its own everywhere) any
text/jsonl file or prepared folder given as ``--eval-data [NAME=]PATH`` (prepared with the
training data's tokenizer) and, with ``--holdout-source NAME``, one source of a corpus folder
(the ``source`` field of each jsonl line) left out of training and evaluated on its own (the
val column then holds the other sources' val documents). The sweep resumes: a finished run
(its summary says so) is skipped, an interrupted one continues from its last checkpoint
(``--checkpoints`` per run). ``--parallel P`` runs P trainings at once: on CPU each on its own
cores (``taskset``), so side-by-side wall-clock stays comparable; with ``--device cuda
--precision bf16 --kernels auto`` they share the GPU. Methods and ablations are defined in
:mod:`megaraptr.bench.methods`, the running of the trainings (and ``--deadline``) in
:mod:`megaraptr.bench.sweep`, the report in :mod:`megaraptr.bench.report`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import List

from megaraptr.bench.methods import ABLATIONS, METHODS, plan_runs, plan_wall_runs
from megaraptr.bench.report import write_report
from megaraptr.bench.sweep import train_all
from megaraptr.data import load_prepared, prepare_cached, resolve_data
from megaraptr.data.eval_sets import hold_out_source, prepare_eval_set
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
    p.add_argument("--eval-data", metavar="[NAME=]PATH", default=None,
                   help="held-out text/jsonl file, or prepared folder, evaluated beside the val "
                        "split (a column named NAME, default the file's name)")
    p.add_argument("--holdout-source", metavar="NAME", default=None,
                   help="train without this source of the --data corpus folder, evaluate on it "
                        "beside val (with a prepared --data: give its prepared text as "
                        "--eval-data NAME=DIR)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--kernels", choices=["eager", "fused", "compiled", "auto"], default="eager")
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
    p.add_argument("--deadline", type=float, default=None, metavar="UNIX_TIME",
                   help="stop the lowest-priority runs (the last named) when the sweep would end "
                        "later; stopped runs are in no table")
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
    args.eval_name, args.eval_path = None, None
    if args.eval_data is not None:
        name, sep, path = args.eval_data.partition("=")
        args.eval_path = path if sep else args.eval_data
        args.eval_name = name if sep else os.path.basename(args.eval_path.rstrip("/")).split(".")[0]
    if args.eval_name in ("val", args.holdout_source) and args.eval_name is not None \
            and not (args.holdout_source and args.eval_name == args.holdout_source
                     and os.path.isfile(os.path.join(args.eval_path, "index.json"))):
        raise ConfigError("--eval-data", f"the column name {args.eval_name!r} is taken; allowed: "
                          "NAME=PATH with another NAME")
    for flag, path in (("--data", args.data), ("--eval-data", args.eval_path)):
        if path is not None and not os.path.exists(path):
            raise ConfigError(flag, f"{path}: no such file or directory")
    if args.holdout_source and args.data is None:
        raise ConfigError("--holdout-source", "needs --data: a corpus folder whose jsonl lines "
                          "have a \"source\" field")
    prepared = args.data is not None and os.path.isfile(os.path.join(args.data, "index.json"))
    if args.holdout_source and prepared and args.eval_name != args.holdout_source:
        raise ConfigError("--holdout-source", f"with a prepared --data, give the held-out text "
                          f"as --eval-data {args.holdout_source}=DIR")
    return args


def prepared_data(args) -> tuple:
    """Prepare (or find in the cache) the data once, so every run reads the same shards;
    returns (data folder, {column name: prepared folder} of the extra held-out sets)."""
    kind, extras = DATA_KIND[args.model], {}
    prepared = args.data is not None and os.path.isfile(os.path.join(args.data, "index.json"))
    if args.holdout_source and not prepared:
        split = hold_out_source(args.data, args.holdout_source)
        data = prepare_cached([split.train], val_inputs=[split.val], kind=kind,
                              vocab_size=args.vocab_size)
        extras[args.holdout_source] = str(prepare_eval_set(split.heldout, data).path)
    else:
        data = resolve_data(args.data, kind=kind, vocab_size=args.vocab_size)
    if args.eval_path is not None:
        extras[args.eval_name] = (args.eval_path if os.path.isfile(
            os.path.join(args.eval_path, "index.json")) else
            str(prepare_eval_set(args.eval_path, data).path))
    for name, path in extras.items():
        if load_prepared(path).vocab_size != data.vocab_size:
            raise ConfigError("--eval-data", f"{path}: another tokenizer than the training "
                              f"data's; allowed: text, or data prepared with {data.path}")
    args.vocab_size = data.vocab_size  # the FLOPs count uses the real vocabulary
    args.extras = extras
    return str(data.path), extras


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        data, _ = prepared_data(args)
        runs = plan_runs(args, data)
        failed = [] if args.report_only else train_all(runs, data, args)
        wall = plan_wall_runs(args, runs)  # needs full and raptr finished: a second phase
        if wall and not args.report_only:
            failed += train_all(wall, data, args)
        runs += wall

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
