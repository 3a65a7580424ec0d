"""Running the trainings of a quality sweep: ``--parallel`` at a time, each a
``megaraptr.train`` process with its log, and an optional deadline.

On CPU every running training gets its own cores (``taskset``, ``OMP_NUM_THREADS``) so
side-by-side wall-clock stays comparable; on a GPU the trainings share the device (small
models do not fill an H200 alone). With a deadline (``--deadline``, Unix time), every
``CHECK_SECONDS`` the sweep measures each running training's step rate and stops the
lowest-priority ones (the last in the plan's order) that the device cannot also finish by the
deadline (:func:`plan_drops`); at the deadline, whatever still runs is stopped. A stopped run
never finished its schedule, so it is in none of the report's tables.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from megaraptr.bench.methods import Run

PROG = "megaraptr-bench-quality"
CHECK_SECONDS = 45.0  # how often the deadline check reads every training's progress
PROGRESS = re.compile(r"(\d+)/(\d+)(?: \[|: loss )")
"""A training's progress in its log: tqdm's ``a/b [`` on a terminal, ``step a/b: loss`` in a
file (one plain line every ``--log-interval`` steps, :func:`run_command`)."""
LOG_LINES = 100  # plain progress lines per training (--log-interval = steps / LOG_LINES)


def run_command(run: Run, data: str, args) -> List[str]:
    cmd = [sys.executable, "-m", "megaraptr.train", "--deepspeed_config", run.config_path,
           "--model", args.model, "--size", args.size, "--data", data,
           "--seq-len", str(args.seq_len), "--train-steps", str(run.steps),
           "--eval-interval", str(run.eval_interval), "--eval-sequences", str(args.eval_sequences),
           "--seed", str(args.seed), "--summary", run.summary_path,
           "--save", run.checkpoint_dir, "--save-interval", str(run.save_interval),
           "--log-interval", str(max(1, run.steps // LOG_LINES))]
    for name, path in args.extras.items():
        cmd += ["--extra-eval", f"{name}={path}"]
    if os.path.isfile(os.path.join(run.checkpoint_dir, "latest")):
        cmd += ["--load", run.checkpoint_dir]
    return cmd


@dataclass
class Running:
    run: Run
    proc: subprocess.Popen
    started: float
    cores: str
    samples: List[Tuple[float, int]] = field(default_factory=list)
    """(time, steps done) at each deadline check."""


def steps_done(run: Run) -> Optional[Tuple[int, int]]:
    """(done, total) from the tail of the run's log (:data:`PROGRESS`), None before step 1."""
    try:
        with open(run.log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(run.log_path) - 4000))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    found = PROGRESS.findall(tail)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def _progress(run: Run) -> str:
    done = steps_done(run)
    return f"step {done[0]}/{done[1]}" if done else "starting"


def _cores(slot: int, parallel: int) -> str:
    count = os.cpu_count() or 1
    per = max(1, count // parallel)
    first = (slot * per) % count
    return f"{first}-{first + per - 1}" if per > 1 else str(first)


def step_rate(item: Running, now: float) -> Optional[float]:
    """Steps per second between the run's last two checks (None until known); records a
    sample of its progress at ``now``."""
    done = steps_done(item.run)
    if done is None:
        return None
    item.samples.append((now, done[0]))
    if len(item.samples) < 2 or item.samples[-1][1] <= item.samples[-2][1]:
        return None
    (t0, s0), (t1, s1) = item.samples[-2:]
    return (s1 - s0) / (t1 - t0)


def plan_drops(remaining: List[Tuple[str, int, Optional[float]]], sharing: int,
               seconds_left: float) -> List[str]:
    """Which runs to stop so the rest end in ``seconds_left``.

    Args:
        remaining: (name, steps to go, steps per second now) of every running training, the
            highest priority first.
        sharing: How many trainings share the device now (the rates were measured so).
        seconds_left: Time to the deadline.

    Returns:
        The names to stop: every run after the longest prefix whose work fits. Processor
        sharing: a run going r steps/s among n equal sharers goes n r alone, so its work is
        steps / (n r) device-seconds, and the device ends them all after the sum of the works.
        Nothing is dropped while a rate is unknown (a run still compiling).
    """
    if any(rate is None or rate <= 0 for _, _, rate in remaining):
        return []
    total, drops = 0.0, []
    for name, steps, rate in remaining:
        total += steps / (sharing * rate)
        if drops or total > seconds_left:
            drops.append(name)
    return drops


def stop(proc: subprocess.Popen, label: str, why: str, progress: str) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    print(f"{PROG}: {label}: dropped ({why}), at {progress}", flush=True)


def _check_deadline(running: List[Optional[Running]], deadline: float, order: dict) -> None:
    """Stop what cannot end by the deadline (everything, once it has passed)."""
    now = time.time()
    active = sorted((r for r in running if r is not None), key=lambda r: order[r.run.label])
    if now >= deadline:
        drops = [r.run.label for r in active]
    else:
        remaining = []
        for item in active:
            rate, done = step_rate(item, now), steps_done(item.run)
            remaining.append((item.run.label, done[1] - done[0] if done else 0, rate))
        drops = plan_drops(remaining, len(active), deadline - now)
    for item in active:
        if item.run.label in drops:
            stop(item.proc, item.run.label, "the deadline" if now >= deadline else
                 "it would end past the deadline", _progress(item.run))


def train_all(runs: List[Run], data: str, args) -> List[Run]:
    """Run what is not finished, ``--parallel`` at a time; returns the runs that failed (or
    were dropped for the deadline)."""
    todo = [r for r in runs if not r.finished()]
    print(f"{PROG}: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
          f"{len(todo)} to train, {args.parallel} at a time", flush=True)
    running: List[Optional[Running]] = [None] * args.parallel
    failed, done, last_report, last_check = [], len(runs) - len(todo), 0.0, time.time()
    deadline = getattr(args, "deadline", None)
    taskset = shutil.which("taskset") if args.parallel > 1 and args.device == "cpu" else None
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
            if item is None and todo and (deadline is None or time.time() < deadline):
                running[slot] = _start(todo.pop(0), slot, data, args, taskset)
        if deadline is not None and time.time() - last_check >= CHECK_SECONDS:
            last_check = time.time()
            _check_deadline(running, deadline, {r.label: i for i, r in enumerate(runs)})
            if time.time() >= deadline:
                failed += todo
                todo = []
        if time.time() - last_report > 60:
            last_report = time.time()
            active = [f"{r.run.label} {_progress(r.run)}" for r in running if r]
            if active:
                print(f"{PROG}: running: {'; '.join(active)}; {len(todo)} waiting", flush=True)
        time.sleep(1.0)
    return failed


def _start(run: Run, slot: int, data: str, args, taskset: Optional[str]) -> Running:
    cores = _cores(slot, args.parallel)
    cmd = run_command(run, data, args)
    if taskset:
        cmd = [taskset, "-c", cores] + cmd
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if args.parallel > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.parallel))
    if args.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    log = open(run.log_path, "a")
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    where = f"cores {cores}" if args.device == "cpu" else args.device
    print(f"{PROG}: start {run.label} ({run.steps} steps) on {where}", flush=True)
    return Running(run, proc, time.time(), cores)
