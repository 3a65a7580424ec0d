"""Pass every shipped ds_config through deepspeed.initialize (run by test_ds_configs.py).

    python tests/workers/ds_config_worker.py OUT.json

For each config: plain ``deepspeed.initialize`` with the whole JSON, raptr block included
(DeepSpeed must ignore it), then ``megaraptr.initialize`` with the model size it was written
for, recording the optimizer, ZeRO stage, precision and schedule DeepSpeed ended up with.
A tensor-parallel config (``"tensor_parallel": {"autotp_size": T}``) loads without that block
here, as its T = 1 stand-in: one process holds no T shards (the tensor-parallel path itself
runs in tests/distributed/test_tensor_parallel.py); its T is recorded.
Sizes in STAND_IN (24 layers of width 1024 and more) are built at their real depth but the
tiny width: the schedule is still checked against the real depth, and the test stays fast.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/workers/ is two levels down
MODEL_OF = {"bert_base": ("bert", "base"), "bert_large": ("bert", "medium"),
            "gpt_medium": ("gpt", "medium"), "gpt_1_3b": ("gpt", "1.3b"),
            "ul2_1_6b": ("gpt", "1.6b"), "gpt_mini": ("gpt", "mini"), "tiny": ("bert", "tiny")}
STAND_IN = {"medium", "1.3b", "1.6b"}


def build(name: str, size: str):
    """The model a config was written for; STAND_IN sizes at the tiny width, same depth."""
    from megaraptr.models import MODELS, SIZES, model_config

    cfg = model_config(size, vocab_size=512, seq_len=128)
    if size in STAND_IN:
        tiny = SIZES["tiny"]
        cfg = replace(cfg, hidden=tiny["hidden"], heads=tiny["heads"], ffn=tiny["ffn"])
    return MODELS[name](cfg)


def main() -> None:
    import deepspeed

    import megaraptr
    from megaraptr.models import build_model, optimizer_groups
    from megaraptr.runtime.distributed import init_distributed

    init_distributed()
    results = {}
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        config = json.loads(path.read_text())
        tensor = config.pop("tensor_parallel", {}).get("autotp_size", 1)
        name, size = next(v for k, v in MODEL_OF.items() if path.stem.startswith(k))
        tiny = build_model(name, "tiny", vocab_size=512, seq_len=64)
        plain, *_ = deepspeed.initialize(model=tiny, model_parameters=tiny.parameters(),
                                         config=config)
        torch.manual_seed(0)
        model = build(name, size)
        total = config.get("scheduler", {}).get("params", {}).get("total_num_steps", 1000)
        if "pipeline" in path.stem:  # through the pipeline path, as one stage on one process
            from megaraptr.planning.balance import Costs
            from megaraptr.runtime.pipe import engine as pipeline

            engine = pipeline.initialize(name, model.cfg, config=config, num_stages=1,
                                         total_steps=total, seed=0, costs=Costs(layer=1.0),
                                         reference=model)
            optimizer, scheduler = engine.optimizer, engine.lr_scheduler
        else:
            engine, optimizer, _, scheduler = megaraptr.initialize(
                model=model, model_parameters=optimizer_groups(model), config=config,
                total_steps=total)
        results[path.name] = {
            "plain_zero_stage": plain.zero_optimization_stage(),
            "zero_stage": engine.zero_optimization_stage(),
            "bf16": engine.bfloat16_enabled(),
            "basic_optimizer": type(engine.basic_optimizer).__name__,
            "scheduler": type(scheduler).__name__ if scheduler else None,
            "raptr_enabled": engine.config.enabled,
            "num_layers": len(engine.blocks),
            "stages": engine.schedule.describe(),
            "groups_tagged": all("raptr_layer" in g for g in engine.basic_optimizer.param_groups),
            "tensor_parallel": tensor,
        }
        del plain, engine, optimizer, model, tiny
    Path(sys.argv[1]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
