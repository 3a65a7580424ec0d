"""Why a finished run could abort at exit, and the teardown that prevents it (one gloo process,
tests/workers/exit_worker.py).

A process group that becomes garbage in a reference cycle (as a finished run's DeepSpeed
engines and pipeline grids do) is freed by whichever thread's garbage collection reaches it;
torch frees it with the GIL released and takes the GIL back inside the destructor. When that
thread is not the main one and the interpreter is finalizing meanwhile, Python ends it with
``pthread_exit`` inside that destructor and the C++ runtime aborts: "terminate called without
an active exception", exit by SIGABRT, after all output. (gdb on such an abort:
``PyThread_exit_thread`` <- ``take_gil`` <- ``pybind11::gil_scoped_release::~gil_scoped_release``
<- ``class_<c10d::ProcessGroup, IntrusivePtrNoGilDestructor>::dealloc`` <- ``list_dealloc``.)
``shutdown_distributed`` collects that garbage on the main thread before exit.
"""
from __future__ import annotations

import os
import signal
import sys

import pytest
from support import ROOT, WORKERS, cpu_env, free_port, run

RUNS = 3


def exit_worker(mode: str):
    env = cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(), RANK=0, LOCAL_RANK=0,
                  WORLD_SIZE=1, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]))
    return run([sys.executable, WORKERS / "exit_worker.py", mode], timeout=120, env=env,
               check=False)


def test_groups_freed_by_another_thread_at_exit_abort_the_interpreter():
    """The cause, reproduced: the old teardown (destroy_process_group, then exit) aborts."""
    procs = [exit_worker("plain") for _ in range(RUNS)]
    aborted = [p for p in procs if p.returncode in (-signal.SIGABRT, 128 + signal.SIGABRT)]
    assert aborted, [(p.returncode, p.stderr[-300:]) for p in procs]  # 6 of 6 here
    for proc in aborted:
        assert "plain: exiting" in proc.stdout  # after all its work, at interpreter exit
        assert "terminate called without an active exception" in proc.stderr


@pytest.mark.parametrize("attempt", range(RUNS))
def test_shutdown_distributed_frees_them_on_the_main_thread(attempt):
    proc = exit_worker("teardown")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teardown: exiting" in proc.stdout and "terminate called" not in proc.stderr
