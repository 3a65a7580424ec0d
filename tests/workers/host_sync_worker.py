"""Host syncs and aten ops of one engine step, one process, for
tests/integration/test_host_syncs.py.

    python tests/workers/host_sync_worker.py OUT.json

The tiny GPT of the host-overhead benchmark (megaraptr.bench.host_arms) under megaraptr's
engine, ZeRO 0/1/2, fp32 and bf16 (and bf16 with "check_grad_overflow": false), at k = L (its
full-model stage) and k = L/2, and on a model of half the depth in its full-model stage; per
case the counts (megaraptr.bench.host_probe) of ``train_step`` alone (the loss not read), after
three warm-up steps.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from megaraptr.bench import host_arms  # noqa: E402
from megaraptr.bench.host_probe import HostSyncCounter  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402


def counts(shape, zero: int, k: int, depth=None) -> dict:
    arm = host_arms.build_arm(shape, "megaraptr", zero, k, depth=depth)
    for _ in range(3):
        arm.step()
    counter = HostSyncCounter()
    with counter:
        arm.engine.train_step([shape.batch])
    out = dict(counter.take(), params_per_layer=len(list(arm.engine.blocks[0].parameters())))
    arm.engine.ds.destroy()
    return out


def main() -> None:
    init_distributed(timeout_minutes=2)
    results = {}
    for precision in ("fp32", "bf16", "bf16-unchecked"):
        shape = host_arms.Shape("gpt", "tiny", 4, 128, 8, 1, precision.split("-")[0], "cpu",
                                1.0, 50)
        shape.make_batch()
        if precision.endswith("unchecked"):
            config = host_arms.ds_config
            host_arms.ds_config = lambda *a, **kw: dict(config(*a, **kw), bf16={
                "enabled": True, "check_grad_overflow": False})
        for zero in (0, 1, 2):
            for k, depth in ((4, None), (2, None), (2, 2)):
                name = f"{precision} z{zero} k={k}" + (f" depth {depth}" if depth else "")
                results[name] = counts(shape, zero, k, depth)
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
