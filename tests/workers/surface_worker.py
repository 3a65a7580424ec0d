"""RaptrEngine's explicit surface on real one-process DeepSpeed engines (run by
tests/integration/test_engine_surface.py).

    python tests/workers/surface_worker.py OUT.json

A tiny BERT under ZeRO-2 on the built-in sample, and a one-stage pipeline of the tiny GPT:
what ``step``/``backward``/``forward``/``train_batch`` and an unknown name raise, what the
forwarded DeepSpeed attributes return, and ``engine(**batch)`` before and after a training
step (in train mode, with a partial subnetwork on the blocks) against the same model with
every block on, in eval mode, computed here without the engine.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

SEQ = 32
NAMES = ("step", "backward", "forward", "train_batch", "no_such_attribute")


def refusals(engine) -> dict:
    """For each name: the exception's type, its message, and whether hasattr said False."""
    out = {}
    for name in NAMES:
        try:
            getattr(engine, name)
            out[name] = {"type": None}
        except AttributeError as err:
            out[name] = {"type": type(err).__name__, "message": str(err),
                         "hasattr": hasattr(engine, name)}
    return out


def zero_engine(data) -> dict:
    import megaraptr
    from megaraptr.core.block import set_layer_mask
    from megaraptr.data import make_batches
    from megaraptr.models import build_model, optimizer_groups

    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "steps_per_print": 10 ** 6, "zero_optimization": {"stage": 2},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "raptr": {"enabled": True, "schedule": "2-3-4", "seed": 3,
                        "consistency_check_interval": 0}}
    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=config, total_steps=6)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, seed=5)
    batch = batches.eval_batches(4, 4)[0]

    def full_model_loss() -> float:  # every block on, eval mode, straight through the module
        saved = [(b.raptr_active, b.raptr_scale, b.raptr_present) for b in engine.blocks]
        set_layer_mask(engine.blocks, None)
        was = model.training
        model.eval()
        with torch.no_grad():
            loss = float(model(**batch))
        model.train(was)
        for b, (a, s, p) in zip(engine.blocks, saved):
            b.raptr_active, b.raptr_scale, b.raptr_present = a, s, p
        return loss

    out = {"refusals": refusals(engine), "kernels_own": "kernels" in vars(engine),
           "kernels": engine.kernels}
    engine.ds.eval()
    out["eval_mode"] = {"call": float(engine(**batch)), "full": full_model_loss(),
                        "evaluate": engine.evaluate([batch]),
                        "training_after": engine.module.training}
    result = engine.train_step(batches.step_batches(1))  # stage 1: 2 of the 4 layers
    engine.ds.train()
    with torch.no_grad():
        subnetwork = float(engine.ds(**batch))  # what a forward would run in train mode
    called = engine(**batch)
    out["train_mode"] = {
        "active": list(result.mask.active), "call": float(called), "full": full_model_loss(),
        "subnetwork": subnetwork, "requires_grad": called.requires_grad,
        "training_after": engine.module.training,
        "mask_after": [b.raptr_active for b in engine.blocks]}
    out["forwarded"] = {
        "module": engine.module is engine.ds.module, "global_steps": engine.global_steps,
        "applied_steps": engine.applied_steps, "device": str(engine.device),
        "micro_batch": engine.train_micro_batch_size_per_gpu(),
        "grad_accum": engine.gradient_accumulation_steps(),
        "optimizer": engine.optimizer is engine.ds.optimizer,
        "zero_stage": engine.zero_optimization_stage(),
        "monitor_enabled": engine.monitor.enabled}
    engine.ds.destroy()
    return out


def pipeline_engine(data) -> dict:
    from megaraptr.models import build_model
    from megaraptr.planning.balance import Costs
    from megaraptr.runtime.pipe import engine as pipeline

    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "steps_per_print": 10 ** 6,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "raptr": {"enabled": True, "schedule": "2-3-4", "consistency_check_interval": 0}}
    torch.manual_seed(0)
    reference = build_model("gpt", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    engine = pipeline.initialize("gpt", reference.cfg, config=config, num_stages=1,
                                 total_steps=6, seed=11, costs=Costs(1.0, 0.2, 2.5),
                                 reference=reference)
    out = {"refusals": refusals(engine), "seed": engine.seed}
    try:
        engine(input_ids=torch.zeros(2, SEQ, dtype=torch.long))
        out["call"] = None
    except AttributeError as err:
        out["call"] = {"type": type(err).__name__, "message": str(err)}
    engine.ds.destroy()
    return out


def main() -> None:
    from megaraptr.data import SAMPLE_DIR, prepare_cached
    from megaraptr.runtime.distributed import init_distributed

    init_distributed()
    mlm = prepare_cached([SAMPLE_DIR], kind="mlm", vocab_size=8192)
    causal = prepare_cached([SAMPLE_DIR], kind="causal", vocab_size=8192)
    results = {"zero": zero_engine(mlm), "pipeline": pipeline_engine(causal)}
    Path(sys.argv[1]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
