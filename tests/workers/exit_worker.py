"""A process group freed by another thread's garbage collection as the interpreter exits (run by
tests/integration/test_exit.py).

    python tests/workers/exit_worker.py MODE      # MODE: plain | teardown

One gloo process. An object in a reference cycle owns process groups, as a finished run's
DeepSpeed engines and pipeline grids do; it is garbage, and a daemon thread (tqdm's monitor or
TensorBoard's writer in a real run) collects it while the main thread exits. ``plain`` ends as
the training command used to: ``destroy_process_group()``, then exit; the daemon thread frees
the groups (torch releases the GIL inside their destructor), the interpreter finalizes
meanwhile, and the daemon thread is ended inside a destructor: "terminate called without an
active exception", SIGABRT. ``teardown`` ends with :func:`megaraptr.runtime.distributed.
shutdown_distributed`, which frees them on the main thread first: exit code 0.
"""
from __future__ import annotations

import gc
import sys
import threading

import torch.distributed as dist

from megaraptr.runtime.distributed import shutdown_distributed

GROUPS = 16


class OwnsGroups:
    """A reference cycle holding process groups; says when the collector reaches it."""

    def __init__(self, reached: threading.Event):
        self.groups = [dist.new_group([0]) for _ in range(GROUPS)]
        self.cycle, self.reached = self, reached

    def __del__(self):
        self.reached.set()  # the groups are freed right after, by the collecting thread


def main(mode: str) -> None:
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE=1, MASTER_ADDR/PORT from the test
    gc.disable()  # only the explicit collections below run
    reached, go = threading.Event(), threading.Event()
    OwnsGroups(reached)  # garbage now, like a finished run's engines

    def collector():  # a daemon thread that happens to collect garbage as the run ends
        go.wait()
        gc.collect()

    threading.Thread(target=collector, daemon=True).start()
    if mode == "teardown":
        shutdown_distributed()
    else:
        dist.destroy_process_group()
    go.set()
    reached.wait(timeout=10)
    print(f"{mode}: exiting", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
