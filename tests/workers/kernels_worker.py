"""The DeepSpeed engine with fast kernels, one process on CPU, run by tests/test_kernels.py.

    python tests/workers/kernels_worker.py OUT.json

The same tiny BERT, data and schedule trained with ``"kernels": "eager"`` and with a fast
path, under several ZeRO stages; per step: loss, mask, the residual scale and whether every
layer's weights, fp32 master and optimizer state were bit-identical across the step. Also the
optimizer the fast path chose and the torch.compile graphs each run made. Compiled blocks use
``$MEGARAPTR_COMPILE_BACKEND`` (the test sets aot_eager: inductor's tracing, no codegen).
"""
from __future__ import annotations

import json
import os
import sys

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from dist_worker import layer_state, unchanged  # noqa: E402

from megaraptr.data import make_batches, resolve_data  # noqa: E402
from megaraptr.errors import ConfigError  # noqa: E402
from megaraptr.kernels import dynamo_counts  # noqa: E402
from megaraptr.models import build_model, optimizer_groups  # noqa: E402
from megaraptr.runtime.distributed import init_distributed  # noqa: E402

STEPS, SEQ = 16, 32
# the scaled case's stages keep 1/4, 1/2, 3/4 and all of the middle layers: scales 4, 2, 4/3, 1
CASES = [  # (zero stage, dtype, kernels, raptr scaling)
    (0, "fp32", "compiled", "inverse_keep_prob"),
    (1, "bf16", "compiled", "none"),
    (1, "fp32", "fused", "none"),
    (2, "fp32", "fused", "none"),
    (3, "fp32", "auto", "none"),
]


def ds_config(stage: int, dtype: str, kernels: str, scaling: str) -> dict:
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.1,
                                                  "torch_adam": True}},
        "zero_optimization": zero, "bf16": {"enabled": dtype == "bf16"},
        "raptr": {"enabled": True, "scaling": scaling, "seed": 7,
                  "schedule": "2-3-4" if scaling == "none" else "2.5-3-3.5-4",
                  "kernels": kernels, "consistency_check_interval": 0},
    }


def run(data, stage: int, dtype: str, kernels: str, scaling: str) -> dict:
    import megaraptr

    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=data.vocab_size, seq_len=SEQ)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(stage, dtype, kernels, scaling),
                                      total_steps=STEPS)
    batches = make_batches(data, seq_len=SEQ, micro_batch_size=4, seed=5)
    graphs = dynamo_counts()["unique_graphs"]
    steps = []
    for step in range(1, STEPS + 1):
        before = [layer_state(engine, i) for i in range(len(engine.blocks))]
        result = engine.train_step(batches.step_batches(step))
        after = [layer_state(engine, i) for i in range(len(engine.blocks))]
        steps.append({"loss": result.loss, "active": list(result.mask.active),
                      "scale": max(result.mask.scale),
                      "unchanged": [unchanged(b, a) for b, a in zip(before, after)]})
    fused = [g.get("fused") for g in engine.basic_optimizer.param_groups]
    out = {"steps": steps, "kernels": engine.kernels, "optimizer_fused": fused,
           "graphs": dynamo_counts()["unique_graphs"] - graphs}
    engine.ds.destroy()
    return out


def main() -> None:
    data = resolve_data(None, kind="mlm")
    init_distributed(timeout_minutes=2)
    results = {}
    for stage, dtype, kernels, scaling in CASES:
        name = f"{stage}-{dtype}-{scaling}"
        results[f"{name}-eager"] = run(data, stage, dtype, "eager", scaling)
        results[f"{name}-{kernels}"] = run(data, stage, dtype, kernels, scaling)
    try:
        run(data, 3, "fp32", "compiled", "none")
    except ConfigError as err:
        results["3-compiled-error"] = str(err)
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
