"""The divergence guard under real DeepSpeed engines, run under torchrun by
tests/distributed/test_divergence.py.

    torchrun --nproc_per_node 2 tests/workers/divergence_worker.py OUT_DIR

A NaN is injected into the loss (a forward hook multiplies it by NaN) on chosen ranks at chosen
steps, so the gradients are NaN too, as in a real divergence. For each configuration (ZeRO 0,
2 and 3 in fp32, ZeRO 2 in bf16) each rank records, in OUT_DIR/divergence.rank<r>.json:

- ``reference`` (ZeRO-0 fp32 only): 8 steps without NaN (loss, LR, state hash per step);
- ``skip``: ``"on_nonfinite": "skip_step"``, NaN on rank 1 only at step 3 and on both ranks at
  step 4: per step the outcome, the LR and the hash of this rank's weights, fp32 masters and
  optimizer state;
- ``resumed``: the same run saved after step 3 (a dropped step), loaded into a new engine and
  run to step 8 (saving again after step 4);
- ``limit``: the step-4 checkpoint loaded with NaN at step 5 as well: the error raised;
- ``stop``: the default "stop" with NaN on rank 1 only at step 3: the error raised, and
  whether a save afterwards was refused (ZeRO-0 fp32 applied the NaN update) or written.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import megaraptr  # noqa: E402
from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.errors import DivergenceError  # noqa: E402
from megaraptr.models import build_model, optimizer_groups  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402

STEPS = 8
SEQ = 32
ZERO3 = {"stage": 3, "stage3_param_persistence_threshold": 0}
CASES = {"0-fp32": (0, "fp32"), "2-fp32": (2, "fp32"), "2-bf16": (2, "bf16"),
         "3-fp32": (3, "fp32")}


def ds_config(stage: int, dtype: str, **raptr) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.1,
                                                  "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0, "warmup_max_lr": 2e-3, "warmup_num_steps": 3,
            "total_num_steps": STEPS}},
        "zero_optimization": ZERO3 if stage == 3 else {"stage": stage},
        "bf16": {"enabled": dtype == "bf16"},
        "raptr": dict({"enabled": True, "schedule": "2-3-4", "seed": 7,
                       "max_consecutive_skips": 2}, **raptr),
    }


class Poison:
    """Multiplies the model's loss by NaN on (rank, step) pairs."""

    def __init__(self, model, engine_ref: list, where: dict):
        self.engine_ref, self.where = engine_ref, where
        model.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        engine = self.engine_ref[0]
        ranks = self.where.get(engine.applied_steps + 1, ())
        if module.training and torch.distributed.get_rank() in ranks:
            return output * float("nan")
        return None


def state_hash(engine) -> str:
    """This rank's weights, fp32 masters and optimizer state, hashed."""
    digest = hashlib.sha256()
    opt = engine.basic_optimizer
    tensors = [p.ds_tensor if hasattr(p, "ds_tensor") else p for p in engine.module.parameters()]
    masters = [p for group in opt.param_groups for p in group["params"]]
    if engine.zero_stage == 3:  # the torch optimizer's groups are empty between steps there
        masters = list(engine.optimizer.fp32_partitioned_groups_flat)
    for p in masters:
        tensors.append(p)
        tensors += [v for _, v in sorted(opt.state[p].items()) if torch.is_tensor(v)]
    for t in tensors:
        digest.update(t.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def build(data, case: str, where: dict, **raptr):
    stage, dtype = CASES[case]
    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    ref: list = []
    Poison(model, ref, where)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(stage, dtype, **raptr), total_steps=STEPS)
    ref.append(engine)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    return engine, batches


def train(engine, batches, until: int, rows: list, save_at=(), save_dir=None) -> None:
    while engine.applied_steps < until:
        result = engine.train_step(batches.step_batches(engine.applied_steps + 1))
        rows.append({"step": result.step, "applied": result.applied, "dropped": result.dropped,
                     "loss": result.mean_loss, "lr": engine.lr_scheduler.get_last_lr()[0],
                     "hash": state_hash(engine), "skipped_steps": engine.skipped_steps,
                     "dropped_total": engine.guard.dropped})
        if result.step in save_at:
            engine.save_checkpoint(save_dir, tag=f"step{result.step}")


def error_of(fn) -> dict:
    try:
        fn()
    except DivergenceError as err:
        return {"error": str(err), "exit_code": err.exit_code}
    return {"error": None}


def run_case(data, case: str, out_dir: str) -> dict:
    nan_at = {3: (1,), 4: (0, 1)}
    skip = {"on_nonfinite": "skip_step"}
    save_dir = os.path.join(out_dir, f"ckpt-{case}")
    record = {}
    if case == "0-fp32":  # the LR schedule without NaN (the same in every case)
        engine, batches = build(data, case, {})
        train(engine, batches, STEPS, record.setdefault("reference", []))
    engine, batches = build(data, case, nan_at, **skip)
    train(engine, batches, STEPS, record.setdefault("skip", []), save_at=(3, 4),
          save_dir=save_dir)
    record["skip_digest"] = engine.digest.hexdigest
    engine, batches = build(data, case, nan_at, **skip)
    engine.load_checkpoint(save_dir, tag="step3")
    train(engine, batches, STEPS, record.setdefault("resumed", []))
    record["resumed_digest"] = engine.digest.hexdigest
    engine, batches = build(data, case, {5: (0, 1)}, **skip)
    engine.load_checkpoint(save_dir, tag="step4")
    record["limit"] = error_of(lambda: train(engine, batches, STEPS, []))
    engine, batches = build(data, case, {3: (1,)})
    record["stop"] = error_of(lambda: train(engine, batches, STEPS, []))
    record["stop"]["applied_steps"] = engine.applied_steps
    stop_dir = os.path.join(out_dir, f"stop-{case}")
    record["stop_save"] = error_of(lambda: engine.save_checkpoint(stop_dir, tag="after"))
    record["stop_save"]["written"] = os.path.isdir(os.path.join(stop_dir, "after"))
    return record


def main() -> None:
    out_dir = sys.argv[1]
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    result = {case: run_case(data, case, out_dir) for case in CASES}
    rank = torch.distributed.get_rank()
    with open(os.path.join(out_dir, f"divergence.rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
