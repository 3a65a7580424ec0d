"""Which parameter groups the ZeRO-1/2 step really works on, one process, for
tests/integration/test_zero_frozen_work.py.

    python tests/workers/frozen_work_worker.py OUT.json

The tiny BERT of tests/workers/dist_worker.py (same config, data, seed) trains 8 steps of
RAPTR 2-3-4 under ZeRO-1 and ZeRO-2 (fp32; bf16; bf16 with fp32 gradient accumulation) with
``freeze``, each once
with megaraptr's step and once with DeepSpeed's own (the ``zero12_frozen_step`` patch forced to
its fallback), and once with megaraptr's step but DeepSpeed's own gradient reduction (the
``zero12_layer_reduce`` patch forced to its fallback: ``-dsreduce``). Around every step it
counts, per parameter group, the calls DeepSpeed's step and epilogue make for a group: its
gradient partition built after backward (``get_flat_partition`` / the compact buffer, or
megaraptr's reduction's ``LayerReduce._group``; the groups that reduction flattens under
``reduced``), its gradient flattened
(``_get_preflattened_grad_partition``, called for a group right before its flatten), its torch
optimizer step, its all-gather (the flat buffers handed to ``all_gather_dp_groups``) and its
weights re-pointed (``_update_model_bit16_weights``); and which groups were frozen.
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from dist_worker import SEQ, ds_config  # noqa: E402

from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.models import build_model, optimizer_groups  # noqa: E402
from megaraptr.runtime.compat import registry  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402
from megaraptr.runtime.zero.reduce import LayerReduce  # noqa: E402

STEPS = 8
CASES = [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16acc")]
"""bf16acc: bf16 with fp32 gradient accumulation (DeepSpeed's compact fp32 buffer per group)."""


def count_calls(calls):
    """Count per-group calls in DeepSpeed's ZeRO-1/2 class itself (below megaraptr's wrappers,
    which see every call and pass on the ones DeepSpeed should do); returns the undo."""
    from deepspeed.runtime.zero import stage_1_and_2

    cls, saved = stage_1_and_2.DeepSpeedZeroOptimizer, {}

    def by_index(name, index_of):
        original = saved[name] = getattr(cls, name)

        def counted(self, *args, **kwargs):
            calls[name].append(index_of(*args, **kwargs))
            return original(self, *args, **kwargs)
        setattr(cls, name, counted)

    by_index("_get_preflattened_grad_partition", lambda i: i)
    by_index("_update_model_bit16_weights", lambda i: i)
    by_index("get_flat_partition", lambda *a, **k: k.get("param_group_idx", a[5:6] and a[5]))
    by_index("_build_compact_grad_partition_buffer", lambda i: i)
    layer_reduce, runs = LayerReduce._group, LayerReduce._runs

    def group(self, i):
        calls["_group"].append(i)
        return layer_reduce(self, i)

    def reduced(self, active):
        out = runs(self, active)
        calls["reduced"].extend(i for run in out for i in run)
        return out
    LayerReduce._group, LayerReduce._runs = group, reduced
    gather = stage_1_and_2.all_gather_dp_groups

    def all_gather(groups_flat, *args, **kwargs):
        calls["all_gather"].append([id(f) for f in groups_flat])
        return gather(groups_flat, *args, **kwargs)
    stage_1_and_2.all_gather_dp_groups = all_gather

    def undo():
        LayerReduce._group, LayerReduce._runs = layer_reduce, runs
        stage_1_and_2.all_gather_dp_groups = gather
        for name, original in saved.items():
            setattr(cls, name, original)
    return undo


def count_optimizer(basic, calls) -> None:
    """The groups each call of the torch optimizer steps."""
    step, group_index = basic.step, {id(g): i for i, g in enumerate(basic.param_groups)}

    def optimizer_step(*args, **kwargs):
        calls["optimizer"].extend(group_index[id(g)] for g in basic.param_groups)
        return step(*args, **kwargs)
    basic.step = optimizer_step


def run(data, stage: int, dtype: str, variant: str) -> dict:
    import megaraptr

    saved = dict(registry.SOURCES)
    if variant == "deepspeed":  # a helper only the copied step relies on "changed": fallback
        registry.SOURCES[registry.Z12 + "._update_model_bit16_weights"] = "0" * 64
    if variant == "dsreduce":  # a method only the reduction relies on "changed": fallback
        registry.SOURCES[registry.Z12 + ".average_tensor"] = "0" * 64
    calls = defaultdict(list)
    undo = count_calls(calls)
    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    config = ds_config(stage, dtype.replace("acc", ""), "freeze")
    config["raptr"].update(consistency_check_interval=0)
    if dtype.endswith("acc"):
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=config, total_steps=STEPS)
    registry.SOURCES.clear()
    registry.SOURCES.update(saved)
    layers = [g["raptr_layer"] for g in engine.basic_optimizer.param_groups]
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, grad_accum=2, seed=5)
    count_optimizer(engine.basic_optimizer, calls)
    group_of_flat = {id(flat): i for i, flat in enumerate(engine.optimizer.bit16_groups_flat)}
    steps = []
    for step in range(1, STEPS + 1):
        calls.clear()
        result = engine.train_step(batches.step_batches(step))
        frozen = [i for i, layer in enumerate(layers) if layer in result.mask.skipped_ids]
        calls["all_gather"] = [group_of_flat[f] for flats in calls["all_gather"] for f in flats]
        steps.append({"frozen": frozen, "calls": {k: sorted(v) for k, v in calls.items()},
                      "loss": result.loss})
    undo()
    out = {"fast_step": engine.fast_step, "patches": engine.deepspeed_patches,
           "groups": len(layers), "steps": steps}
    engine.ds.destroy()
    return out


def main() -> None:
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    results = {}
    for stage, dtype in CASES:
        for variant in ("megaraptr", "deepspeed", "dsreduce"):
            results[f"{stage}-{dtype}-{variant}"] = run(data, stage, dtype, variant)
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
