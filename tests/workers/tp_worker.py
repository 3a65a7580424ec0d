"""Tensor-parallel scenarios, run under torchrun by tests/distributed/test_tensor_parallel.py.

    torchrun --nproc_per_node N tests/workers/tp_worker.py MODE OUT_DIR CASE [CASE ...]
    python tests/workers/tp_worker.py ref OUT_DIR CASE [CASE ...]    (one process)

MODE ``ref`` (N = 1) trains without tensor parallelism, the reference; MODE ``tp`` trains the
same model, weights, data and config with ``"tensor_parallel": {"autotp_size": 2}`` (N = 2:
TP 2; N = 4: TP 2 x DP 2). A case is ``MODEL-DTYPE-zSTAGE[-xK|-balanced]``: MODEL ``gpt``,
``bert``, ``hfgpt2``, ``hfllama`` (a tiny Llama with 2 key-value heads), DTYPE ``fp32``/``bf16``,
``-xK``: K times the gradient accumulation (a one-process reference of a run with K
data-parallel replicas), ``-balanced``: balanced sampling on the partitions a 2-stage pipeline
plans from the heavy-head costs (the reference of ``pipe-repartition``). Also, in MODE ``tp``:

- ``resume``: the ``gpt-fp32-z2`` run as 6 steps, a checkpoint, a fresh engine loading it and
  6 more steps;
- ``mismatch``: tensor rank 1 has another raptr seed;
- ``diverge``: the ``gpt-fp32-z2`` run for 6 steps under ``"on_nonfinite": "skip_step"``, the
  loss NaN on tensor rank 1 only at step 3 (a forward hook, so its gradients are NaN too);
- ``pipe-DTYPE-zSTAGE`` (N = 4): the tiny GPT as a 2-stage pipeline of TP 2 (3D: TP 2 x PP 2);
- ``pipe-repartition`` (N = 4): the same with balanced sampling and a heavy-head cost model
  whose plan moves a layer between stages at a schedule-stage change, handed over through a
  checkpoint (the run resumes on another partition).

Per step each rank records the loss (mean over data-parallel replicas), whether the
divergence guard dropped the update, the mask, the
subnetwork key, the all-reduces the tensor-parallel layers ran (counted at their
``torch.distributed`` calls), the active layers among its own blocks and, for every own block,
whether its weights, fp32 master and optimizer state were bit-identical across the step. Every
rank writes OUT_DIR/<mode><N>-<case>.rank<r>.json.
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
from megaraptr.models import build_model, model_config, optimizer_groups  # noqa: E402
from megaraptr.planning.balance import Costs  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402
from megaraptr.runtime.tp import layers as tp_layers, tensor_size  # noqa: E402

STEPS, SEQ, MICRO, GAS = 12, 32, 2, 2
HEAVY_HEAD = Costs(layer=1.0, embedding=0.0, head=3.0)


class CountingDist:
    """``torch.distributed`` for the tensor-parallel layers, counting their all-reduces."""

    def __init__(self, real):
        self.real, self.all_reduces = real, 0

    def all_reduce(self, tensor, *args, **kwargs):
        self.all_reduces += 1
        return self.real.all_reduce(tensor, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


COUNTER = tp_layers.dist = CountingDist(torch.distributed)


def parse(case: str):
    """(model, dtype, zero stage, gradient accumulation) of ``MODEL-DTYPE-zSTAGE[-xK]``."""
    parts = case.split("-")
    gas = GAS * (int(parts[3][1:]) if len(parts) > 3 and parts[3].startswith("x") else 1)
    return parts[0], parts[1], int(parts[2][1:]), gas


def heavy_head_plan(ds_config: dict):
    """The partitions a 2-stage pipeline plans for each schedule stage from HEAVY_HEAD."""
    from megaraptr.methods import build_schedule, split_ds_config
    from megaraptr.runtime.pipe import engine as pipeline

    raptr, _ = split_ds_config(ds_config)
    schedule = build_schedule(raptr, num_layers=4, total_steps=STEPS)
    return pipeline.plan(raptr, schedule, HEAVY_HEAD, 2)


def config(dtype: str, stage: int, gas: int, tensor: int, seed: int = 3,
           sampling: str = "bernoulli", **raptr) -> dict:
    cfg = {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": gas,
           "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
           "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.1,
                                                     "torch_adam": True}},
           "zero_optimization": {"stage": stage}, "bf16": {"enabled": dtype == "bf16"},
           "raptr": {"enabled": True, "schedule": "2-3-4", "seed": seed, "sampling": sampling,
                     "consistency_check_interval": 1, **raptr}}
    if tensor > 1:
        cfg["tensor_parallel"] = {"autotp_size": tensor}
    return cfg


def build(name: str, vocab: int):
    """The model of a case, the same weights on every rank; (model, batch -> inputs)."""
    torch.manual_seed(0)
    if name.startswith("hf"):
        from megaraptr.models.hf import adapt, causal_inputs, hf_config, hf_model

        config = hf_config("hf:" + name[2:], size="tiny", vocab_size=vocab, seq_len=SEQ)
        if name == "hfllama":
            config.num_key_value_heads = 2  # tiny's one key-value head does not split in two
        return adapt(hf_model(config)), causal_inputs
    return build_model(name, "tiny", vocab_size=vocab, seq_len=SEQ), None


def layer_state(engine, block) -> list:
    """A block's weights, and the optimizer's fp32 master and state of its groups."""
    opt = engine.basic_optimizer
    out = [p.detach().clone() for p in block.parameters()]
    for group in opt.param_groups:
        if group["raptr_layer"] == block.layer_id:
            for master in group["params"]:
                out.append(master.detach().clone())
                out += [v.clone() for _, v in sorted(opt.state[master].items())]
    return out


def same(before: list, after: list) -> bool:
    return len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


def train(engine, batches, steps, inputs=None, rows=None) -> list:
    rows = [] if rows is None else rows
    for step in steps:
        before = [layer_state(engine, b) for b in engine.blocks]
        COUNTER.all_reduces = 0
        micro = batches.step_batches(step)
        result = engine.train_step([inputs(b) for b in micro] if inputs else micro)
        after = [layer_state(engine, b) for b in engine.blocks]
        rows.append({
            "step": result.step, "loss": engine.mean_over_ranks(result.loss),
            "dropped": result.dropped,
            "mask": str(result.mask), "all_reduces": COUNTER.all_reduces,
            "local_active": sum(result.mask.active[b.layer_id] for b in engine.blocks),
            "key": subnetwork_key(engine.seed, engine.schedule.fingerprint(), step, result.mask),
            "unchanged": {b.layer_id: same(x, y)
                          for b, x, y in zip(engine.blocks, before, after)}})
    return rows


def summary(engine, batches, rows, inputs=None) -> dict:
    evals = batches.eval_batches(8, MICRO)
    return {"steps": rows, "digest": engine.digest.hexdigest,
            "gas": engine.ds.gradient_accumulation_steps(), "tensor": tensor_size(engine),
            "eval": engine.evaluate([inputs(b) for b in evals] if inputs else evals),
            "layers": [b.layer_id for b in engine.blocks]}


def run_dp(data, case: str, tensor: int, out_dir: str) -> dict:
    import megaraptr

    name, dtype, stage, gas = parse("gpt-fp32-z2" if case in ("resume", "diverge") else case)
    balanced = case.endswith("-balanced")
    guard = {"on_nonfinite": "skip_step"} if case == "diverge" else {}
    ds_config = config(dtype, stage, gas, tensor, sampling="balanced" if balanced else "bernoulli",
                       **guard)
    partitions = heavy_head_plan(ds_config) if balanced else None

    def make():
        model, inputs = build(name, data.vocab_size)
        engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                          config=ds_config, total_steps=STEPS,
                                          partitions=partitions)
        if case == "diverge":  # NaN loss on tensor rank 1 at step 3 (training forwards only)
            model.register_forward_hook(lambda module, _, out: out * float("nan") if (
                module.training and engine.applied_steps + 1 == 3
                and engine.tp.tensor_index == 1) else None)
        return engine, inputs

    engine, inputs = make()
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=MICRO, grad_accum=gas, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    if case != "resume":
        steps = range(1, 7 if case == "diverge" else STEPS + 1)
        return summary(engine, batches, train(engine, batches, steps, inputs), inputs)
    rows = train(engine, batches, range(1, 7))
    save_dir = os.path.join(out_dir, "ckpt-resume")
    engine.save_checkpoint(save_dir, tag="step6")
    engine.ds.destroy()
    engine, _ = make()  # fresh weights from the seed; the checkpoint replaces them
    engine.load_checkpoint(save_dir, tag="step6")
    return summary(engine, batches, train(engine, batches, range(7, STEPS + 1), rows=rows))


def run_mismatch(data) -> dict:
    import megaraptr

    rank = torch.distributed.get_rank()
    model, _ = build("gpt", data.vocab_size)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=config("fp32", 0, GAS, 2, seed=3 + rank % 2),
                                      total_steps=STEPS)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=MICRO, grad_accum=GAS, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    try:
        engine.train_step(batches.step_batches(1))
    except RankMismatchError as err:
        return {"error": str(err), "applied": engine.applied_steps}
    return {"error": None, "applied": engine.applied_steps}


def run_pipe(data, case: str, out_dir: str) -> dict:
    from megaraptr.runtime.pipe import engine as pipeline, optim_state, repartition
    from megaraptr.runtime.tp import pipeline_groups

    moved = case == "pipe-repartition"
    _, dtype, stage, gas = parse("gpt-fp32-z1" if moved else case)
    cfg = model_config("tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    ds_config = config(dtype, stage, gas, 2, sampling="balanced" if moved else "bernoulli")
    groups = pipeline_groups(ds_config, 2)

    def make(parts=None):
        torch.manual_seed(0)
        return pipeline.initialize("gpt", cfg, config=ds_config, num_stages=2,
                                   total_steps=STEPS, seed=0, groups=groups,
                                   costs=HEAVY_HEAD if moved else Costs(layer=1.0),
                                   reference=build("gpt", data.vocab_size)[0], layer_parts=parts)

    engine = make()
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=MICRO, grad_accum=gas, seed=5,
                           dp_rank=engine.data_parallel_rank, dp_size=engine.data_parallel_size)
    rows, used, moments_equal = [], [list(engine.layer_parts)], None
    save_dir = os.path.join(out_dir, f"ckpt-{case}")
    for step in range(1, STEPS + 1):
        if engine.needs_repartition():
            engine, _ = repartition.repartition(engine, make, save_dir)
            used.append(list(engine.layer_parts))
            folder = os.path.join(save_dir, f"repartition-step{step - 1}")
            saved = repartition.read_saved_state(folder, groups.tensor_index)
            now = optim_state.export_state(engine.ds)
            moments_equal = all(set(saved[n]) == set(v) and all(
                torch.equal(saved[n][k], v[k]) if torch.is_tensor(v[k]) else saved[n][k] == v[k]
                for k in v) for n, v in now.items())
        train(engine, batches, [step], rows=rows)
    out = summary(engine, batches, rows)
    out.update(partitions=used, moments_equal=moments_equal, stage_id=engine.ds.stage_id,
               files=sorted(os.listdir(folder)) if moved else None)
    return out


def main() -> None:
    import faulthandler

    faulthandler.dump_traceback_later(int(os.environ.get("WORKER_STACKS_AFTER", 600)), exit=True)
    mode, out_dir, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
    init_distributed(timeout_minutes=3)
    rank = torch.distributed.get_rank()
    for case in cases:
        data = resolve_data(None, kind="mlm" if case.startswith("bert") else "causal")
        if case.startswith("pipe-"):
            result = run_pipe(data, case, out_dir)
        elif case == "mismatch":
            result = run_mismatch(data)
        else:
            result = run_dp(data, case, 2 if mode == "tp" else 1, out_dir)
        name = f"{mode}{torch.distributed.get_world_size()}-{case}.rank{rank}.json"
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(result, f)
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
