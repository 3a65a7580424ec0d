"""DeepSpeed-compatibility scenarios, run under torchrun by tests/distributed/test_compat.py.

    torchrun --nproc_per_node 2 tests/workers/compat_worker.py OUT_DIR CASE [CASE ...]

Each case changes some recorded source hashes of megaraptr.runtime.compat (as a DeepSpeed
release that changed those methods would look) before ``megaraptr.initialize``, then trains
the tiny BERT of tests/workers/dist_worker.py (same config, data and seed) on 2 ranks:

- ``2-active`` / ``2-fallback`` (the ZeRO-1/2 step and norm changed) /
  ``2-stepfallback`` (a helper only the copied step relies on changed): ZeRO-2, freeze;
- ``3-active`` / ``3-fallback`` (ZeRO-3 step helpers and the coordinator changed): ZeRO-3,
  freeze;
- ``3m-active`` / ``3m-fallback`` (the ZeRO-3 norm, the stale-gradient helper and the
  coordinator changed): ZeRO-3, momentum (megaraptr zeroes stale gradients every step);
- ``pipe``: patches without a fallback changed, each before a 2-stage pipeline of the tiny
  GPT: the error each rank raised.

Every rank writes OUT_DIR/<case>.rank<r>.json: per step the loss (mean over ranks), the mask,
whether each layer's weights, fp32 master and Adam state were bit-identical across the step,
and the clipping norm; the engine's deepspeed_patches and which fast paths it installed.
"""
from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from dist_worker import SEQ, ds_config, grad_norm, layer_state, unchanged  # noqa: E402

from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.errors import DeepSpeedCompatError  # noqa: E402
from megaraptr.models import build_model, model_config, optimizer_groups  # noqa: E402
from megaraptr.runtime.compat import registry  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402

STEPS = 16
Z12, Z3, PPC = registry.Z12, registry.Z3, registry.PPC
CASES = {  # case -> (ZeRO stage, skipped-layer policy, targets whose recorded hash changes)
    "2-active": (2, "freeze", ()),
    "2-fallback": (2, "freeze", (Z12 + ".step", Z12 + ".has_overflow")),
    "2-stepfallback": (2, "freeze", (Z12 + "._update_model_bit16_weights",)),
    "3-active": (3, "freeze", ()),
    "3-fallback": (3, "freeze", (Z3 + "._prepare_sub_group", PPC)),
    "3m-active": (3, "momentum", ()),
    "3m-fallback": (3, "momentum", (Z3 + "._get_norm_groups",
                                    Z3 + "._get_fp32_grad_state_partition", PPC)),
}
PIPE_CASES = {  # pipeline config -> the target a DeepSpeed release changed
    "fp32-z0": registry.ENGINE + ".clip_fp32_gradients",
    "fp32-z1": Z12 + ".scaled_global_norm",
    "bf16-z0": registry.BF16 + "._lazy_init_hp_params_optimizer_state",
}


def changed(targets):
    """Record another hash for ``targets`` (what a changed DeepSpeed source looks like);
    returns the undo."""
    saved = {t: registry.SOURCES[t] for t in targets}
    registry.SOURCES.update({t: "0" * 64 for t in targets})
    return lambda: registry.SOURCES.update(saved)


def train(data, case: str) -> dict:
    import megaraptr

    stage, policy, targets = CASES[case]
    undo = changed(targets)
    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(stage, "fp32", policy), total_steps=STEPS)
    undo()  # the engine decided at start-up; nothing is checked again
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    steps = []
    for step in range(1, STEPS + 1):
        before = [layer_state(engine, i) for i in range(len(engine.blocks))]
        result = engine.train_step(batches.step_batches(step))
        after = [layer_state(engine, i) for i in range(len(engine.blocks))]
        steps.append({"loss": engine.mean_over_ranks(result.loss),
                      "active": list(result.mask.active),
                      "unchanged": [unchanged(b, a) for b, a in zip(before, after)],
                      "grad_norm": grad_norm(engine)})
    return {"steps": steps, "patches": engine.deepspeed_patches, "fast_norm": engine.fast_norm,
            "fast_step": engine.fast_step, "trace": engine.trace is not None,
            "private_clear": engine.private_clear}


def pipe_errors() -> dict:
    """Each pipeline config with the one patch it cannot run without changed: the error."""
    from megaraptr.planning.balance import Costs
    from megaraptr.runtime.pipe import engine as pipeline

    cfg = model_config("tiny", vocab_size=512, seq_len=SEQ)
    out = {}
    for name, target in PIPE_CASES.items():
        dtype, _, stage = name.partition("-z")
        config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
                  "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
                  "zero_optimization": {"stage": int(stage)}, "bf16": {"enabled": dtype == "bf16"},
                  "raptr": {"enabled": True, "schedule": "2-3-4", "seed": 11}}
        undo = changed([target])
        try:
            pipeline.initialize("gpt", cfg, config=config, num_stages=2, total_steps=8, seed=0,
                                costs=Costs(layer=1.0, embedding=0.0, head=0.0))
            out[name] = None
        except DeepSpeedCompatError as err:
            out[name] = str(err)
        finally:
            undo()
    return out


def main() -> None:
    out_dir, cases = sys.argv[1], sys.argv[2:]
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    rank = int(os.environ["RANK"])
    for case in cases:
        result = pipe_errors() if case == "pipe" else train(data, case)
        with open(os.path.join(out_dir, f"{case}.rank{rank}.json"), "w") as f:
            json.dump(result, f)
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
