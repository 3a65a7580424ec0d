"""Gradual stacking under DeepSpeed on 2 processes, run by tests/test_method_stacking.py.

    torchrun --nproc_per_node 2 tests/workers/methods_worker.py OUT_DIR

The same tiny BERT, data and stacking schedule "2-3-4" over 12 steps under ZeRO 0, 1, 2, 3 in
fp32 and ZeRO 0, 2 in bf16 (optimizer state "fresh"), and with "copy" (ZeRO 0, 1, 3) and
"reset_all" (ZeRO 0, 2) in fp32. Records per step the loss and the active layers, the eval loss
before training (the 2-layer model), and at each growth whether every new layer equals its
source layer in the module (gathered under ZeRO-3) and in the optimizer's fp32 master copy, and
the basic optimizer's state right after the growth (copied: each new layer's holders equal
its source's; reset: no state left).
Each rank writes OUT_DIR/stacking.rank<r>.json.
"""
from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from dist_worker import SEQ, ZERO3  # noqa: E402

from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.models import build_model, optimizer_groups  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402
from megaraptr.runtime.layer_copy import state_holders  # noqa: E402

STEPS = 12


def config(stage: int, dtype: str, state: str = "fresh") -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.1,
                                                  "torch_adam": True}},
        "zero_optimization": ZERO3 if stage == 3 else {"stage": stage},
        "bf16": {"enabled": dtype == "bf16"},
        "raptr": {"enabled": True, "method": "stacking", "schedule": "2-3-4",
                  "consistency_check_interval": 1, "stacking": {"optimizer_state": state}},
    }


def full_weights(param) -> torch.Tensor:
    import deepspeed

    if hasattr(param, "ds_id"):
        with deepspeed.zero.GatheredParameters([param]):
            return param.data.detach().clone().float()
    return param.detach().clone().float()


def master(param):
    from deepspeed.utils import safe_get_full_fp32_param

    value = safe_get_full_fp32_param(param)
    return None if value is None else value.detach().clone()


def state_after(engine, target: int, source: int) -> dict:
    """The basic optimizer's state of a new layer against its source's, right after a growth."""
    basic = engine.ds.basic_optimizer
    layers = state_holders(engine.ds.optimizer, basic)
    pairs = [(t, s) for tg, sg in zip(layers[target], layers[source]) for t, s in zip(tg, sg)]
    assert pairs, "no optimizer-state holders found"
    same = all(basic.state.get(t) and all(torch.equal(basic.state[t][k], basic.state[s][k])
                                          for k in ("exp_avg", "exp_avg_sq", "step"))
               for t, s in pairs)
    return {"state_copied": same, "state_entries": len(basic.state)}


def run_case(data, stage: int, dtype: str, state: str = "fresh") -> dict:
    import megaraptr

    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=config(stage, dtype, state), total_steps=STEPS)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=1, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    eval_set = batches.eval_batches(16, 4)
    growths, copy = [], engine.copy_layers

    def recording_copy(copies):
        copy(copies)
        for target, source in copies:
            pairs = list(zip(engine.blocks[source].parameters(),
                             engine.blocks[target].parameters()))
            masters = [(master(s), master(t)) for s, t in pairs]
            growths.append({
                "step": engine.applied_steps + 1, "target": target, "source": source,
                "module_equal": all(torch.equal(full_weights(s), full_weights(t))
                                    for s, t in pairs),
                "master_equal": None if masters[0][0] is None else
                all(torch.equal(a, b) for a, b in masters), **state_after(engine, target, source)})

    engine.copy_layers = recording_copy
    initial = engine.evaluate(eval_set)
    steps = []
    for step in range(1, STEPS + 1):
        result = engine.train_step(batches.step_batches(step))
        steps.append({"loss": engine.mean_over_ranks(result.loss),
                      "active": list(result.mask.active)})
    return {"initial_eval": initial, "final_eval": engine.evaluate(eval_set), "steps": steps,
            "growths": growths, "flops": engine.layer_flops_fraction()}


def main() -> None:
    out_dir = sys.argv[1]
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    cases = [(s, "fp32", "fresh") for s in (0, 1, 2, 3)] + [(0, "bf16", "fresh"),
                                                             (2, "bf16", "fresh")]
    cases += [(s, "fp32", "copy") for s in (0, 1, 3)] + [(s, "fp32", "reset_all") for s in (0, 2)]
    result = {f"{s}-{d}" + ("" if o == "fresh" else f"-{o}"): run_case(data, s, d, o)
              for s, d, o in cases}
    with open(os.path.join(out_dir, f"stacking.rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(result, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
