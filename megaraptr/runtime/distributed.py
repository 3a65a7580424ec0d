"""Process-group start-up for every launcher (deepspeed, torchrun, a plain process), and the
teardown at the end of a run.

:func:`init_distributed`, called before DeepSpeed builds anything:

- a plain ``python -m megaraptr.train`` (no RANK/WORLD_SIZE in the environment) becomes a
  one-process group on a free local port, so the same code path runs everywhere;
- on CPU, DeepSpeed's shared-memory all-reduce op, which training never uses, is not
  JIT-built (it costs 50-100 s on a fresh machine); see docs: deepspeed.md.

:func:`shutdown_distributed`, called last, frees every process group that has become garbage
on the calling (main) thread. Why: DeepSpeed engines, optimizers and pipeline grids are
reference cycles, so their process groups are freed by whichever thread's garbage collection
reaches them. torch frees a ``ProcessGroup`` with the GIL released and takes it back in a
destructor; if that happens on another thread (tqdm's monitor, TensorBoard's writer) while the
interpreter is exiting, Python ends that thread with ``pthread_exit`` inside the destructor and
the C++ runtime aborts: "terminate called without an active exception", SIGABRT, after the
run has finished (tests/integration/test_exit.py reproduces it).
"""
from __future__ import annotations

import atexit
import gc
import os
import socket
import sys

from megaraptr.runtime import compat


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_cpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def device():
    """This rank's accelerator device (``cuda:<local rank>``, or ``cpu``)."""
    import torch
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def init_distributed(timeout_minutes: int | None = None) -> None:
    """Start (once) the process group DeepSpeed will use."""
    from datetime import timedelta

    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (the module whose build_shm_op we skip)

    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if is_cpu() and compat.guard(compat.PROCESS_PATCHES, "cpu_shm_op_skip"):
        # TorchBackend takes None for "no shared-memory op"
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    kwargs = {}
    if timeout_minutes is not None:
        kwargs["timeout"] = timedelta(minutes=timeout_minutes)
    deepspeed.init_distributed(**kwargs)
    atexit.unregister(shutdown_distributed)  # once, however often init runs: no flag to keep
    atexit.register(shutdown_distributed)  # any script that exits without calling it


def shutdown_distributed() -> None:
    """Tear the run's process groups down on this thread (call it last, on the main thread).

    Automatic garbage collection is off while the run's garbage (engines and their process
    groups, in reference cycles) is collected here, and back as it was after: no other thread
    can free one of those groups meanwhile, and afterwards none is left for one to free; what
    stays referenced (DeepSpeed's module-level groups) is freed by the main thread when the
    interpreter tears its modules down.
    """
    import torch

    enabled = gc.isenabled()
    gc.disable()  # no thread starts a collection while the run's garbage is freed here
    try:
        gc.collect()  # the run's engines and their process groups, freed on this thread
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        gc.collect()  # the groups only destroy_process_group still referenced
    finally:
        if enabled:
            gc.enable()
