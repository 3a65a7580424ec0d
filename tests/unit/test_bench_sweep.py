"""The quality sweep's deadline (megaraptr.bench.sweep): step rates read from each run's log,
which runs the device cannot also finish in time (processor sharing, priority order), and the
running trainings stopped for it."""
from __future__ import annotations

import subprocess
import time

from megaraptr.bench.methods import Run
from megaraptr.bench.sweep import Running, _check_deadline, plan_drops, step_rate, steps_done


def running(tmp_path, name: str) -> Running:
    folder = tmp_path / name
    folder.mkdir()
    run = Run(20, name, 1000, 50, 250, str(folder), {})
    return Running(run, subprocess.Popen(["sleep", "60"]), time.time(), "0")


def log(item: Running, done: int) -> None:
    with open(item.run.log_path, "a") as f:  # what tqdm writes, without a newline
        f.write(f"train:  {done // 10}%|#  | {done}/1000 [00:10<01:30,  9.00it/s, loss=5.1]")


def test_the_rate_is_measured_between_checks(tmp_path):
    item = running(tmp_path, "full")
    try:
        assert steps_done(item.run) is None and step_rate(item, 100.0) is None
        log(item, 100)
        assert steps_done(item.run) == (100, 1000) and step_rate(item, 100.0) is None
        log(item, 300)
        assert step_rate(item, 140.0) == 5.0
    finally:
        item.proc.kill()


def test_drops_keep_the_longest_prefix_whose_shared_work_fits():
    # three runs sharing the device, each at 1 step/s: alone 3 steps/s
    runs = [("full", 300, 1.0), ("raptr", 240, 1.0), ("pld", 240, 1.0)]
    assert plan_drops(runs, 3, 1000) == []  # 100 + 80 + 80 device-seconds
    assert plan_drops(runs, 3, 200) == ["pld"]
    assert plan_drops(runs, 3, 150) == ["raptr", "pld"]  # never keep a later one instead
    assert plan_drops(runs + [("new", 10, None)], 4, 1) == []  # a rate unknown: wait


def test_running_trainings_are_stopped_lowest_priority_first(tmp_path):
    first, second = running(tmp_path, "full"), running(tmp_path, "pld")
    order = {first.run.label: 0, second.run.label: 1}
    try:
        now = time.time()
        for item in (first, second):
            item.samples = [(now - 100, 0)]
            log(item, 100)  # 1 step/s with two sharing: 900 steps to go = 450 s of device
        _check_deadline([second, None, first], now + 1000, order)
        assert first.proc.poll() is None and second.proc.poll() is None
        for item in (first, second):
            item.samples = [(now - 100, 0)]
        _check_deadline([second, None, first], now + 600, order)
        assert first.proc.poll() is None and second.proc.poll() is not None
        _check_deadline([first], now - 1, order)  # past it: stop anything
        assert first.proc.poll() is not None
    finally:
        first.proc.kill()
        second.proc.kill()


def test_progress_read_from_plain_log_lines_too(tmp_path):
    item = running(tmp_path, "raptr")
    try:
        with open(item.run.log_path, "w") as f:  # what megaraptr-train prints into a file
            f.write("megaraptr: step 0: eval loss 7.6325\n"
                    "megaraptr: step 10/1000: loss 6.9000, lr 0.002, 8 layers, 5,000 tokens/s, "
                    "ETA 0:01:30\nmegaraptr: step 20/1000: loss 6.5000, lr 0.002, 6 layers, "
                    "5,100 tokens/s, ETA 0:01:29\n")
        assert steps_done(item.run) == (20, 1000)
    finally:
        item.proc.kill()
