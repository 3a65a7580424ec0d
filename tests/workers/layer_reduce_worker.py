"""megaraptr's ZeRO-1/2 gradient reduction against DeepSpeed's own, setting by setting, for
tests/distributed/test_zero_layer_reduce.py.

    torchrun --nproc_per_node 2 tests/workers/layer_reduce_worker.py OUT_DIR

The tiny BERT of tests/workers/dist_worker.py (same config, data, seed; RAPTR 2-3-4, freeze,
2 micro-batches per step) trains 8 steps under ZeRO-1 in each of the reduction settings DeepSpeed
offers (its defaults; a bucket smaller than a layer group; ``reduce_scatter`` off, alone and with
a gradient predivide factor; ``contiguous_gradients`` off), once with megaraptr's reduction
(``zero12_layer_reduce``) and once with DeepSpeed's own (the patch forced to its fallback by a
"changed" ``average_tensor``); and, with megaraptr's reduction and the default settings, 4
steps, a checkpoint, a fresh engine loading it and 4 more steps (``resumed``). Each rank writes
OUT_DIR/rank<r>.json: per case and variant the patch's state, the losses and clipping norms, and
a digest of the trained weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from dist_worker import SEQ, ds_config  # noqa: E402

from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.models import build_model, optimizer_groups  # noqa: E402
from megaraptr.runtime.compat import registry  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402

STEPS = 8
SETTINGS = {  # case -> what changes in the config
    "default": {},
    "small-buckets": {"zero_optimization": {"reduce_bucket_size": 3000}},
    "no-reduce-scatter": {"zero_optimization": {"reduce_scatter": False}},
    "predivide": {"zero_optimization": {"reduce_scatter": False},
                  "gradient_predivide_factor": 2.0},
    "not-contiguous": {"zero_optimization": {"contiguous_gradients": False}},
}


def build(data, case: str):
    import megaraptr

    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    config = ds_config(1, "fp32", "freeze")
    config["raptr"].update(consistency_check_interval=0)
    for key, value in SETTINGS[case].items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=config, total_steps=STEPS)
    return engine, model


def train(engine, model, data, steps, out: dict) -> dict:
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5)
    for step in steps:
        result = engine.train_step(batches.step_batches(step))
        out.setdefault("losses", []).append(result.loss)
        out.setdefault("norms", []).append(float(engine.get_global_grad_norm()))
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    out.update(patch=engine.deepspeed_patches.get("zero12_layer_reduce"),
               digest=digest.hexdigest())
    return out


def run(data, case: str, own: bool) -> dict:
    saved = dict(registry.SOURCES)
    if own:
        registry.SOURCES[registry.Z12 + ".average_tensor"] = "0" * 64
    engine, model = build(data, case)
    registry.SOURCES.clear()
    registry.SOURCES.update(saved)
    out = train(engine, model, data, range(1, STEPS + 1), {})
    engine.ds.destroy()
    return out


def resumed(data, folder: str) -> dict:
    engine, model = build(data, "default")
    out = train(engine, model, data, range(1, STEPS // 2 + 1), {})
    engine.save_checkpoint(folder, tag="half")
    engine.ds.destroy()
    engine, model = build(data, "default")
    engine.load_checkpoint(folder, tag="half")
    out = train(engine, model, data, range(STEPS // 2 + 1, STEPS + 1), out)
    engine.ds.destroy()
    return out


def main() -> None:
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    results = {f"{case}-{'deepspeed' if own else 'megaraptr'}": run(data, case, own)
               for case in SETTINGS for own in (False, True)}
    results["resumed"] = resumed(data, os.path.join(sys.argv[1], "ckpt"))
    rank = torch.distributed.get_rank()
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
