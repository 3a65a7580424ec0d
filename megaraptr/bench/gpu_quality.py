"""The GPU quality study in one command (``bash launch/gpu_quality.sh``): does RAPTR pay off
at a realistic width, on BERT and on GPT, against fair baselines?

Two sweeps of :mod:`megaraptr.bench.quality` run at once on one GPU (every training of both
is its own process sharing the device: small models do not fill an H200 alone), bf16, kernels
``auto``, each model trained to ``TOKENS_PER_PARAM`` tokens per non-embedding parameter:

=====  =============  ==========  ==================  =====  =====================  ====
model  size           non-emb.    tokens / step       steps  data (train tokens)    LR
=====  =============  ==========  ==================  =====  =====================  ====
bert   small 12x256   9.48M       256 x 128 = 32,768  5,784  16.6M (WordPiece 8192)  1e-3
gpt    slim 12x176    4.49M       256 x 128 = 32,768  2,739  22.2M (BPE 2048)        2e-3
=====  =============  ==========  ==================  =====  =====================  ====

(BERT sees its data 11.4 times, a fresh mask each time; GPT 4.0 times.) Methods, in priority
order: ``METHODS``; PLD and LayerDrop are FLOP-matched to RAPTR. The work this needs is
estimated in docs/quality/README.md (all methods of both models: about 1.1e17 FLOPs); while the
sweeps run, :func:`watch` measures every training's step rate each ``CHECK_SECONDS`` and stops
the lowest-priority trainings the GPU could not also finish by the deadline (processor sharing,
:func:`megaraptr.bench.sweep.plan_drops`), so the runs that do finish each finish their own
schedule. Data: the carried folder (:mod:`megaraptr.bench.gpu_quality_data`): the corpus without
one source (``moby``), evaluated on val and on that source. Each sweep writes the quality
benchmark's report, curves, PNG and runs.json under ``OUT/<model>/``; the short table comes
last. The runs share the GPU, so their wall-clock is no side-by-side measure (the step-time
benchmark, docs/benchmarks.md, is one) and no wall-clock-matched run is made here.

    python -m megaraptr.bench.gpu_quality --out out --data /tmp/gq/data --deadline T
    python -m megaraptr.bench.gpu_quality --out /tmp/o --data /tmp/gq/data --dry-run  # CPU
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from megaraptr.bench.sweep import CHECK_SECONDS, PROGRESS, plan_drops

TOKENS_PER_PARAM = 20
HOLDOUT = "moby"
METHODS = ["full", "raptr", "stacking", "full-matched", "raptr-fixed-half", "raptr-sqrt-scaled",
           "raptr-scaled", "pld", "layerdrop"]
GPU = {"bert": dict(size="small", micro_batch=256, seq_len=128, lr=1e-3),
       "gpt": dict(size="slim", micro_batch=256, seq_len=128, lr=2e-3)}
DRY = {"bert": dict(size="tiny", micro_batch=4, seq_len=32, lr=2e-3, steps=8),
       "gpt": dict(size="tiny", micro_batch=4, seq_len=32, lr=2e-3, steps=8)}
DRY_METHODS = ["full", "raptr", "full-matched"]
REPORT_SECONDS = 25  # kept after the deadline for the reports and the table


def sweep_command(args, model: str) -> List[str]:
    preset = (DRY if args.dry_run else GPU)[model]
    data = Path(args.data)
    cmd = [sys.executable, "-m", "megaraptr.bench.quality", "--out", str(Path(args.work) / model),
           "--model", model, "--size", preset["size"], "--data", str(data / model),
           "--holdout-source", args.holdout_source,
           "--eval-data", f"{args.holdout_source}={data / f'{model}-{args.holdout_source}'}",
           "--seq-len", str(preset["seq_len"]), "--micro-batch", str(preset["micro_batch"]),
           "--lr", str(preset["lr"]), "--methods", ",".join(args.methods),
           "--parallel", str(len(args.methods)), "--checkpoints", "1"]
    if args.dry_run:
        cmd += ["--steps", str(preset["steps"]), "--evals", "2", "--eval-sequences", "8",
                "--device", "cpu"]
    else:
        cmd += ["--horizons", str(TOKENS_PER_PARAM), "--evals", "10", "--eval-sequences", "256",
                "--device", "cuda", "--precision", "bf16", "--kernels", "auto"]
    return cmd


def trainings(work: Path) -> Dict[Tuple[str, str], Tuple[int, Path]]:
    """The running ``megaraptr.train`` processes of the sweeps under ``work``: (model, method)
    -> (pid, run folder), found by the ``--summary`` path in their command lines."""
    found = {}
    pattern = re.compile(re.escape(str(work)) + r"/(\w+)/(h[^/]+)/([\w.-]+)/summary")
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        match = pattern.search(cmd) if "megaraptr.train" in cmd else None
        if match:
            model, horizon, method = match.groups()
            found[(model, method)] = (int(entry.name), work / model / horizon / method)
    return found


def watch(work: Path, methods: List[str], deadline: float, procs: dict) -> List[str]:
    """Until the sweeps end: every ``CHECK_SECONDS``, stop the trainings (of either model) that
    the GPU cannot also finish by ``deadline`` (the lowest priority first: by method, in
    ``methods``' order); returns what was stopped."""
    samples: Dict[Tuple[str, str], List[Tuple[float, int]]] = {}
    dropped: List[str] = []
    folders: Dict[str, Path] = {}
    last = time.time()
    while any(p.poll() is None for p in procs.values()):
        time.sleep(1.0)
        if time.time() - last < CHECK_SECONDS and time.time() < deadline:
            continue
        now, running, last = time.time(), trainings(work), time.time()
        order = sorted(running, key=lambda key: (methods.index(key[1])
                                                 if key[1] in methods else 99, key[0]))
        remaining = []
        for key in order:
            log = running[key][1] / "log.txt"
            found = PROGRESS.findall(log.read_text(errors="replace")[-4000:]
                               if log.is_file() else "")
            done, total = (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)
            history = samples.setdefault(key, [])
            history.append((now, done))
            rate = None if len(history) < 2 or done <= history[-2][1] or not found else \
                (done - history[-2][1]) / (now - history[-2][0])
            remaining.append(("/".join(key), total - done, rate))
        drops = [r[0] for r in remaining] if now >= deadline else \
            plan_drops(remaining, len(remaining), deadline - now)
        for name in drops:
            pid = running[tuple(name.split("/"))][0]
            if name in dropped:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            dropped.append(name)
            folders[name] = running[tuple(name.split("/"))][1]
            print(f"megaraptr-bench-gpu-quality: dropped {name}: " + (
                "the deadline" if now >= deadline else "the GPU would not finish it by the "
                "deadline beside the runs before it"), flush=True)
    return [d for d in dropped if not _finished(folders[d])]  # some end as they are stopped


def _finished(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "summary.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def short_table(work: Path, models: List[str]) -> List[str]:
    """One line per finished run: FLOPs, val and held-out loss, gaps to full and full-matched."""
    lines = [f"{'model/method':<26}{'steps':>7}{'FLOPs':>7}{'val':>8}{'vs full':>9}"
             f"{'vs f-m':>8}{HOLDOUT:>8}{'vs full':>9}{'vs f-m':>8}"]
    for model in models:
        path = work / model / "runs.json"
        runs = json.loads(path.read_text()) if path.is_file() else {}
        by = {label.split("/")[-1]: r for label, r in runs.items()}
        full, fm = by.get("full"), by.get("full-matched")

        def gap(r, ref, extra=False):
            if ref is None:
                return "-"
            a = r["final_extra_eval_loss"].get(HOLDOUT) if extra else r["final_eval_loss"]
            b = ref["final_extra_eval_loss"].get(HOLDOUT) if extra else ref["final_eval_loss"]
            return "-" if a is None or b is None else f"{a - b:+.4f}"

        for name, r in by.items():
            held = r.get("final_extra_eval_loss", {}).get(HOLDOUT)
            lines.append(f"{model + '/' + name:<26}{r['steps']:>7}{r['flops_vs_full']:>7.3f}"
                         f"{r['final_eval_loss']:>8.4f}{gap(r, full):>9}{gap(r, fm):>8}"
                         f"{held if held is None else format(held, '.4f'):>8}"
                         f"{gap(r, full, True):>9}{gap(r, fm, True):>8}")
        if not by:
            lines.append(f"{model}: no finished runs")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="megaraptr-bench-gpu-quality",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "out"),
                   help="reports, PNGs, runs.json and logs (small)")
    p.add_argument("--work", default="/tmp/gq-work", help="the sweeps (checkpoints: large)")
    p.add_argument("--data", required=True, help="the unpacked data/ of the carried folder")
    p.add_argument("--models", default="bert,gpt")
    p.add_argument("--methods", default=None, help="joined by commas, in priority order")
    p.add_argument("--holdout-source", default=HOLDOUT)
    p.add_argument("--deadline", type=float, default=None, help="Unix time to end by")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, fp32")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    args.methods = (args.methods.split(",") if args.methods else
                    DRY_METHODS if args.dry_run else METHODS)
    for model in models:
        for part in (model, f"{model}-{args.holdout_source}"):
            if not (Path(args.data) / part / "index.json").is_file():
                print(f"megaraptr-bench-gpu-quality: error: --data: no {part}/index.json in "
                      f"{args.data}; allowed: the data/ unpacked from .gpuquality/data.tar.xz "
                      "(python -m megaraptr.bench.gpu_quality_data)", file=sys.stderr)
                return 2
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    start, procs = time.time(), {}
    for model in models:  # both sweeps at once: every training shares the one device
        (work / model).mkdir(parents=True, exist_ok=True)
        log = open(out / f"{model}.log", "w")
        procs[model] = subprocess.Popen(sweep_command(args, model), stdout=log,
                                        stderr=subprocess.STDOUT)
    dropped = watch(work, args.methods, args.deadline - REPORT_SECONDS, procs) \
        if args.deadline else []
    codes = {m: proc.wait() for m, proc in procs.items()}
    for model in models:  # the small files come back; checkpoints stay in --work
        dst = out / model
        dst.mkdir(exist_ok=True)
        for f in (work / model).glob("*"):
            if f.is_file():
                (dst / f.name).write_bytes(f.read_bytes())
        for log in (work / model).glob("h*/*/log.txt"):
            (dst / f"{log.parent.name}.log").write_bytes(log.read_bytes())
    print(f"megaraptr-bench-gpu-quality: {time.time() - start:.0f} s; sweeps exited "
          f"{codes}; reports: {', '.join(str(out / m / 'report.md') for m in models)}")
    if dropped:
        print(f"dropped for the time budget (in no table): {', '.join(dropped)}")
    print("\n".join(short_table(work, models)), flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
