"""Multi-process scenarios for the engine tests, run under torchrun by tests/test_engine.py.

    torchrun --nproc_per_node 2 tests/workers/dist_worker.py SCENARIO OUT_DIR

Each rank writes OUT_DIR/<scenario>.rank<r>.json; the pytest side asserts. Scenarios:

- ``matrix``: the same tiny BERT, data and schedule under ZeRO 0, 1, 2, 3 in fp32 and bf16,
  freeze and momentum, and with activation checkpointing (DeepSpeed's, torch's). Records per step: loss, mask, and whether every layer's weights,
  fp32 master and optimizer state were bit-identical across the step; the subnetwork key
  of every step (to compare ranks); forward calls of every block's submodules.
- ``mismatch``: rank 1 uses another raptr seed; records the error each rank raised.
- ``fp16_overflow``: forced fp16 overflows; records every call's step, mask and outcome.
"""
from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from megaraptr.core.mask import subnetwork_key  # noqa: E402
from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.errors import RankMismatchError  # noqa: E402
from megaraptr.models import build_model, optimizer_groups  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402

STEPS = 32
# ZeRO-3 with every parameter partitioned and released after use (the tiny model's tensors
# would otherwise stay below the persistence threshold and never be gathered at all).
ZERO3 = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
         "stage3_prefetch_bucket_size": 200000}
SEQ = 32


def ds_config(stage: int, dtype: str, policy: str, seed: int = 7) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.1,
                                                  "torch_adam": True}},
        "zero_optimization": ZERO3 if stage == 3 else {"stage": stage},
        "bf16": {"enabled": dtype == "bf16"},
        "raptr": {"enabled": True, "schedule": "2-3-4", "skipped_layers": policy,
                  "consistency_check_interval": 1, "seed": seed},
    }


def layer_state(engine, layer: int) -> list:
    """Model weights, and the optimizer's copy and state, of one layer (this rank's share)."""
    opt = engine.basic_optimizer
    params = list(engine.blocks[layer].parameters())
    if engine.zero_stage == 3:  # partitioned weights; fp32 master per sub-group
        out = [p.ds_tensor.detach().clone() for p in params]
        zero3 = engine.optimizer
        masters = [flat for sub, flat in enumerate(zero3.fp32_partitioned_groups_flat)
                   if opt.param_groups[zero3.sub_group_to_group_id[sub]]["raptr_layer"] == layer]
    else:
        out = [p.detach().clone() for p in params]
        masters = [p for g in opt.param_groups if g["raptr_layer"] == layer for p in g["params"]]
    for master in masters:
        out.append(master.detach().clone())
        out += [v.clone() for _, v in sorted(opt.state[master].items())]
    return out


def unchanged(before: list, after: list) -> bool:
    return len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


class Gathers(list):
    """ZeRO-3 all-gathers as they happen: ids of gathered parameters (the list itself), how
    many were prefetched (gathered while another module was being fetched), and how often
    the coordinator threw its trace away."""

    prefetched = 0
    invalidations = 0

    def clear(self):
        super().clear()
        self.prefetched = self.invalidations = 0


def grad_norm(engine):
    """The global gradient norm DeepSpeed clipped with (None where it keeps none: ZeRO-0)."""
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def record_gathers(engine) -> Gathers:
    gathers = Gathers()
    if engine.zero_stage != 3:
        return gathers
    coordinator = engine.optimizer._get_param_coordinator()
    name = "_PartitionedParameterCoordinator__all_gather_params"
    gather, fetch, invalidate = (getattr(coordinator, name), coordinator.fetch_sub_module,
                                 coordinator._invalidate_trace)
    current = {}

    def all_gather(params, forward):
        gathers.extend(id(p) for p in params)
        own = {id(p) for p in current["module"].parameters(recurse=False)}
        gathers.prefetched += sum(id(p) not in own for p in params)
        return gather(params, forward)

    def fetch_sub_module(module, forward):
        current["module"] = module
        return fetch(module, forward)

    def invalidate_trace():
        gathers.invalidations += 1
        return invalidate()
    setattr(coordinator, name, all_gather)
    coordinator.fetch_sub_module = fetch_sub_module
    coordinator._invalidate_trace = invalidate_trace
    return gathers


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


def run_case(data, stage: int, dtype: str, policy: str, checkpoint: str = "none") -> dict:
    import megaraptr

    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ,
                        checkpoint=checkpoint)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(stage, dtype, policy), total_steps=STEPS)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    calls = count_calls(engine)
    gathered = record_gathers(engine)
    layer_of = {id(p): b.layer_id for b in engine.blocks for p in b.parameters()}
    steps = []
    for step in range(1, STEPS + 1):
        before = [layer_state(engine, i) for i in range(len(engine.blocks))]
        snapshot = dict(calls)
        gathered.clear()
        result = engine.train_step(batches.step_batches(step))
        after = [layer_state(engine, i) for i in range(len(engine.blocks))]
        steps.append({
            "step": result.step, "loss": engine.mean_over_ranks(result.loss),
            "active": list(result.mask.active),
            "key": subnetwork_key(engine.seed, engine.schedule.fingerprint(), step, result.mask),
            "unchanged": [unchanged(b, a) for b, a in zip(before, after)],
            "calls": {k: calls[k] - snapshot[k] for k in calls},
            "grad_norm": grad_norm(engine),
            "gathered_layers": sorted({layer_of[i] for i in gathered if i in layer_of}),
            "prefetched": gathered.prefetched, "invalidations": gathered.invalidations,
        })
    return {"steps": steps, "digest": engine.digest.hexdigest,
            "flops": engine.layer_flops_fraction(), "linked": state_linked(engine),
            "fast_norm": engine.fast_norm, "fast_step": engine.fast_step}


def state_linked(engine):
    """Whether DeepSpeed's per-parameter optimizer-state API sees every block's Adam state,
    including layers first stepped after step 1 (None where the API does not apply)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    params = [p for block in engine.blocks for p in block.parameters()]
    if not all(hasattr(p, "_hp_mapping") or hasattr(p, "ds_id") for p in params):
        return None
    return all(safe_get_full_optimizer_state(p, "exp_avg") is not None for p in params)


def matrix(data) -> dict:
    results = {}
    for stage in (0, 1, 2, 3):
        for dtype in ("fp32", "bf16"):
            for policy in ("freeze", "momentum"):
                if policy == "momentum" and dtype == "bf16":
                    continue
                results[f"{stage}-{dtype}-{policy}"] = run_case(data, stage, dtype, policy)
    # activation checkpointing: DeepSpeed's under ZeRO-3, torch's under ZeRO-2
    results["3-fp32-freeze-ckpt"] = run_case(data, 3, "fp32", "freeze", "deepspeed")
    results["2-fp32-freeze-ckpt"] = run_case(data, 2, "fp32", "freeze", "torch")
    return results


def mismatch(data) -> dict:
    """Rank 1 has another raptr seed, under ZeRO-2 and then ZeRO-3."""
    from deepspeed import comm as dist

    import megaraptr

    results = {}
    for stage in (2, 3):
        torch.manual_seed(0)
        model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
        config = ds_config(stage, "fp32", "freeze", seed=7 + dist.get_rank())
        engine, *_ = megaraptr.initialize(model=model, config=config, total_steps=STEPS)
        batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5,
                               dp_rank=engine.data_parallel_rank,
                               dp_size=engine.data_parallel_size)
        error = None
        try:
            engine.train_step(batches.step_batches(1))
        except RankMismatchError as err:
            error = str(err)
        results[str(stage)] = {"error": error, "applied_steps": engine.applied_steps}
    return results


def fp16_overflow(data) -> dict:
    """fp16 with dynamic loss scaling under ZeRO-2 and ZeRO-3: after step 14 (random
    subsets) the loss scale is forced to 2**30, so the next calls overflow and DeepSpeed skips
    them. Records every call, and the digest the run's masks should have."""
    import megaraptr
    from megaraptr.core.mask import MaskDigest

    results = {}
    for stage in (2, 3):
        torch.manual_seed(0)
        model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
        config = ds_config(stage, "fp32", "freeze")
        config["fp16"] = {"enabled": True, "initial_scale_power": 12, "loss_scale_window": 1000}
        engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                          config=config, total_steps=STEPS)
        batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5,
                               dp_rank=engine.data_parallel_rank,
                               dp_size=engine.data_parallel_size)
        calls = []
        while engine.applied_steps < 20 and len(calls) < 60:
            if engine.applied_steps == 14 and not any(c["forced"] for c in calls):
                engine.optimizer.loss_scaler.cur_scale = 2.0 ** 30
                calls.append({"forced": True})
            result = engine.train_step(batches.step_batches(engine.applied_steps + 1))
            calls.append({"forced": False, "step": result.step, "applied": result.applied,
                          "active": list(result.mask.active), "after": engine.applied_steps})
        expected = MaskDigest()
        for step in range(1, engine.applied_steps + 1):
            expected.update(step, engine.sampler.mask(step))
        results[str(stage)] = {"calls": [c for c in calls if not c["forced"]],
                               "digest": engine.digest.hexdigest,
                               "expected_digest": expected.hexdigest,
                               "skipped_steps": engine.skipped_steps}
    return results


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    scenarios = {"matrix": matrix, "mismatch": mismatch, "fp16_overflow": fp16_overflow}
    result = scenarios[scenario](data)
    rank = int(os.environ["RANK"])
    with open(os.path.join(out_dir, f"{scenario}.rank{rank}.json"), "w") as f:
        json.dump(result, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
