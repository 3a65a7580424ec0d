"""Multi-process scenarios for the engine tests, run under torchrun by tests/test_engine.py.

    torchrun --nproc_per_node 2 tests/dist_worker.py SCENARIO OUT_DIR

Each rank writes OUT_DIR/<scenario>.rank<r>.json; the pytest side asserts. Scenarios:

- ``matrix``: the same tiny BERT, data and schedule under ZeRO 0, 1, 2 in fp32 and bf16,
  freeze and momentum. Records per step: loss, mask, and whether every layer's weights,
  fp32 master and optimizer state were bit-identical across the step; the subnetwork key
  of every step (to compare ranks); forward calls of every block's submodules.
- ``mismatch``: rank 1 uses another raptr seed; records the error each rank raised.
"""
from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from megaraptr.consistency import subnetwork_key  # noqa: E402
from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.distributed import init_distributed  # noqa: E402
from megaraptr.errors import RankMismatchError  # noqa: E402
from megaraptr.models import build_model, optimizer_groups  # noqa: E402

STEPS = 12
SEQ = 32


def ds_config(stage: int, dtype: str, policy: str, seed: int = 7) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.1,
                                                  "torch_adam": True}},
        "zero_optimization": {"stage": stage}, "bf16": {"enabled": dtype == "bf16"},
        "raptr": {"enabled": True, "schedule": "2-3-4", "skipped_layers": policy,
                  "consistency_check_interval": 1, "seed": seed},
    }


def layer_state(engine, layer: int) -> list:
    """Model weights, and the optimizer's copy and state, of one layer (this rank's share)."""
    opt = engine.basic_optimizer
    out = [p.detach().clone() for p in engine.blocks[layer].parameters()]
    for group in opt.param_groups:
        if group["raptr_layer"] == layer:
            for p in group["params"]:
                out.append(p.detach().clone())
                out += [v.clone() for _, v in sorted(opt.state[p].items())]
    return out


def unchanged(before: list, after: list) -> bool:
    return len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


def count_calls(engine) -> dict:
    counts = {}
    for block in engine.blocks:
        for name, sub in block.named_children():
            key = f"{block.layer_id}.{name}"
            counts[key] = 0

            def hook(_module, _inputs, _output, key=key):
                counts[key] += 1
            sub.register_forward_hook(hook)
    return counts


def run_case(data, stage: int, dtype: str, policy: str) -> dict:
    import megaraptr

    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(stage, dtype, policy), total_steps=STEPS)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    calls = count_calls(engine)
    steps = []
    for step in range(1, STEPS + 1):
        before = [layer_state(engine, i) for i in range(len(engine.blocks))]
        snapshot = dict(calls)
        result = engine.train_step(batches.step_batches(step))
        after = [layer_state(engine, i) for i in range(len(engine.blocks))]
        steps.append({
            "step": result.step, "loss": engine.mean_over_ranks(result.loss),
            "active": list(result.mask.active),
            "key": subnetwork_key(engine.seed, engine.schedule.fingerprint(), step, result.mask),
            "unchanged": [unchanged(b, a) for b, a in zip(before, after)],
            "calls": {k: calls[k] - snapshot[k] for k in calls},
        })
    return {"steps": steps, "digest": engine.digest.hexdigest,
            "flops": engine.layer_flops_fraction(), "linked": state_linked(engine)}


def state_linked(engine):
    """Whether DeepSpeed's per-parameter optimizer-state API sees every block's Adam state,
    including layers first stepped after step 1 (None where the API does not apply)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    params = [p for block in engine.blocks for p in block.parameters()]
    if not all(hasattr(p, "_hp_mapping") for p in params):
        return None
    return all(safe_get_full_optimizer_state(p, "exp_avg") is not None for p in params)


def matrix(data) -> dict:
    results = {}
    for stage in (0, 1, 2):
        for dtype in ("fp32", "bf16"):
            for policy in ("freeze", "momentum"):
                if policy == "momentum" and dtype == "bf16":
                    continue
                results[f"{stage}-{dtype}-{policy}"] = run_case(data, stage, dtype, policy)
    return results


def mismatch(data) -> dict:
    import megaraptr
    from deepspeed import comm as dist

    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    config = ds_config(2, "fp32", "freeze", seed=7 + dist.get_rank())
    engine, *_ = megaraptr.initialize(model=model, config=config, total_steps=STEPS)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    try:
        engine.train_step(batches.step_batches(1))
    except RankMismatchError as err:
        return {"error": str(err), "applied_steps": engine.applied_steps}
    return {"error": None, "applied_steps": engine.applied_steps}


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    result = {"matrix": matrix, "mismatch": mismatch}[scenario](data)
    rank = int(os.environ["RANK"])
    with open(os.path.join(out_dir, f"{scenario}.rank{rank}.json"), "w") as f:
        json.dump(result, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
