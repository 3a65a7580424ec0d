"""Pipeline-parallel scenarios, run under torchrun by tests/test_pipeline.py.

    torchrun --nproc_per_node N tests/workers/pipeline_worker.py MODE OUT_DIR [CASE ...]

MODE ``pipe`` trains the tiny GPT as a 2-stage DeepSpeed pipeline (N = 2: pp=2; N = 4: pp=2 x
dp=2); MODE ``ref`` trains the same model, initial weights, data and config without a pipeline
(N = 1 or 2 data-parallel ranks) as the reference. Cases (default: all of the mode):

- ``fp32-z0``, ``fp32-z1``, ``bf16-z0``, ``bf16-z1``: RAPTR "2-3-4", bernoulli sampling;
- ``balanced``: "balanced" sampling; the reference samples with the pipeline's plan;
- ``repartition[:BASE]``: a cost model with a heavy head, whose plan moves a layer to the
  first stage for the later stages: the run is handed over through a checkpoint mid-run
  (pipe only; config of case BASE, default ``fp32-z0``, whose reference trajectory it has).

Every rank writes OUT_DIR/<mode>-<case>.rank<r>.json: per step the loss, the mask and the
subnetwork key; the eval loss at the end; for ``repartition`` the partitions used and whether
every parameter's fp32 master, Adam moments and step count were identical before and after.
"""
from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from megaraptr.core.mask import subnetwork_key  # noqa: E402
from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.models import build_model, model_config, optimizer_groups  # noqa: E402
from megaraptr.planning.balance import Costs  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402

STEPS, SEQ, MICRO, GAS = 12, 32, 2, 4
HEAVY_HEAD = Costs(layer=1.0, embedding=0.0, head=3.0)
EVEN = Costs(layer=1.0, embedding=0.0, head=0.0)


def config(case: str) -> dict:
    dtype, _, stage = case.partition("-z") if "-z" in case else ("fp32", "", "0")
    stage = int(stage)
    return {
        "train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GAS,
        "gradient_clipping": float(os.environ.get("CLIP", 1.0)), "steps_per_print": 10 ** 6,
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.1,
                                                  "torch_adam": True}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4,
                                                     "warmup_max_lr": 3e-3}},
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": dtype == "bf16"},
        "raptr": {"enabled": True, "schedule": "2-3-4", "seed": 11,
                  "sampling": "balanced" if case == "balanced" else "bernoulli",
                  "consistency_check_interval": 1},
    }


def reference_model(vocab: int):
    torch.manual_seed(0)
    return build_model("gpt", "tiny", vocab_size=vocab, seq_len=SEQ)


def record(engine, result, rows: list) -> None:
    rows.append({"loss": float(result.loss), "mask": str(result.mask),
                 "key": subnetwork_key(engine.seed, engine.schedule.fingerprint(),
                                       result.step, result.mask)})


def same_entry(a: dict, b: dict) -> bool:
    """Bit-identical optimizer state of one parameter (tensors equal, numbers equal)."""
    return set(a) == set(b) and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def run_pipe(data, case: str, out_dir: str) -> dict:
    from megaraptr.runtime.pipe import engine as pipeline, optim_state, repartition

    cfg = model_config("tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    repartitions = case.startswith("repartition")
    costs = HEAVY_HEAD if repartitions else EVEN
    ds_config = config(case.partition(":")[2] or "fp32-z0" if repartitions else case)

    def build(parts=None):
        return pipeline.initialize("gpt", cfg, config=ds_config, num_stages=2,
                                   total_steps=STEPS, seed=0, costs=costs,
                                   reference=reference_model(data.vocab_size),
                                   layer_parts=parts)

    engine = build()
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=MICRO, grad_accum=GAS, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    rows, used, moments_equal = [], [list(engine.layer_parts)], None
    save_dir = os.path.join(out_dir, f"ckpt-{case}")
    for step in range(1, STEPS + 1):
        if engine.needs_repartition():
            engine, _ = repartition.repartition(engine, build, save_dir)
            used.append(list(engine.layer_parts))
            folder = os.path.join(save_dir, f"repartition-step{step - 1}")
            saved, now = repartition.read_saved_state(folder), optim_state.export_state(engine.ds)
            moments_equal = all(same_entry(saved[n], v) for n, v in now.items())
        record(engine, engine.train_step(batches.step_batches(step)), rows)
    eval_loss = engine.evaluate(batches.eval_batches(8, MICRO))
    return {"steps": rows, "eval": eval_loss, "partitions": used, "moments_equal": moments_equal,
            "plan": [list(p) for p in engine.partitions], "stage_id": engine.ds.stage_id,
            "layers": [b.layer_id for b in engine.blocks], "flops": engine.layer_flops_fraction()}


def run_ref(data, case: str) -> dict:
    import megaraptr
    from megaraptr.methods import build_schedule, split_ds_config
    from megaraptr.runtime.pipe import engine as pipeline

    model = reference_model(data.vocab_size)
    partitions = None
    if case == "balanced":  # the plan a 2-stage pipeline makes from the same costs
        raptr, _ = split_ds_config(config(case))
        schedule = build_schedule(raptr, num_layers=4, total_steps=STEPS)
        partitions = pipeline.plan(raptr, schedule, EVEN, 2)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=config(case), total_steps=STEPS,
                                      partitions=partitions)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=MICRO, grad_accum=GAS, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    rows = []
    for step in range(1, STEPS + 1):
        result = engine.train_step(batches.step_batches(step))
        result.loss = engine.mean_over_ranks(result.loss)
        record(engine, result, rows)
    return {"steps": rows, "eval": engine.evaluate(batches.eval_batches(8, MICRO)),
            "flops": engine.layer_flops_fraction()}


def main() -> None:
    import faulthandler

    faulthandler.dump_traceback_later(int(os.environ.get("WORKER_STACKS_AFTER", 600)), exit=True)
    mode, out_dir, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
    data = resolve_data(None, kind="causal")
    init_distributed(timeout_minutes=3)
    rank = int(os.environ["RANK"])
    for case in cases:
        result = run_pipe(data, case, out_dir) if mode == "pipe" else run_ref(data, case)
        with open(os.path.join(out_dir, f"{mode}-{case}.rank{rank}.json"), "w") as f:
            json.dump(result, f)
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
