"""DeepSpeed's own ``load_checkpoint`` on a megaraptr engine (run by
tests/e2e/test_checkpoint_faults.py).

    python tests/workers/checkpoint_worker.py LOAD_DIR TAG OUT.json

Builds a one-process tiny GPT engine (ZeRO-2) and calls ``engine.ds.load_checkpoint(LOAD_DIR,
tag=TAG)``: DeepSpeed's API, past megaraptr's resolution, verification and preflight. It
writes which function the checkpoint engine loads with, and what the load raised.
"""
from __future__ import annotations

import json
import sys

import torch


def main(load_dir: str, tag: str, out: str) -> None:
    import megaraptr
    from megaraptr.models import build_model, optimizer_groups
    from megaraptr.runtime.distributed import init_distributed

    init_distributed()
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=8192, seq_len=32)
    config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
              "steps_per_print": 10 ** 6, "zero_optimization": {"stage": 2},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "raptr": {"enabled": True, "schedule": "2-3-4"}}
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=config, total_steps=6)
    loader = engine.ds.checkpoint_engine.load
    result = {"loader": f"{loader.__module__}.{loader.__qualname__}"}
    try:
        engine.ds.load_checkpoint(load_dir, tag=tag)
        result["error"] = None
    except Exception as err:  # noqa: BLE001 (reported, whatever it is)
        result["error"] = {"type": type(err).__name__, "message": str(err)}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
