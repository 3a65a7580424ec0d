"""Pass every shipped ds_config through deepspeed.initialize (run by test_ds_configs.py).

    python tests/ds_config_worker.py OUT.json

For each config: plain ``deepspeed.initialize`` with the whole JSON, raptr block included
(DeepSpeed must ignore it), then ``megaraptr.initialize`` with the model size it was written
for, recording the optimizer, ZeRO stage, precision and schedule DeepSpeed ended up with.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parent.parent
MODEL_OF = {"bert_base": ("bert", "base"), "gpt_medium": ("gpt", "medium"),
            "gpt_mini": ("gpt", "mini"), "tiny": ("bert", "tiny")}


def main() -> None:
    import deepspeed

    import megaraptr
    from megaraptr.distributed import init_distributed
    from megaraptr.models import build_model, optimizer_groups

    init_distributed()
    results = {}
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        config = json.loads(path.read_text())
        name, size = next(v for k, v in MODEL_OF.items() if path.stem.startswith(k))
        tiny = build_model(name, "tiny", vocab_size=512, seq_len=64)
        plain, *_ = deepspeed.initialize(model=tiny, model_parameters=tiny.parameters(),
                                         config=config)
        torch.manual_seed(0)
        model = build_model(name, size, vocab_size=512, seq_len=128)
        total = config.get("scheduler", {}).get("params", {}).get("total_num_steps", 1000)
        if "pipeline" in path.stem:  # through the pipeline path, as one stage on one process
            from megaraptr import pipeline
            from megaraptr.balance import Costs

            engine = pipeline.initialize(name, model.cfg, config=str(path), num_stages=1,
                                         total_steps=total, seed=0, costs=Costs(layer=1.0),
                                         reference=model)
            optimizer, scheduler = engine.optimizer, engine.lr_scheduler
        else:
            engine, optimizer, _, scheduler = megaraptr.initialize(
                model=model, model_parameters=optimizer_groups(model), config=str(path),
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
        }
        del plain, engine, optimizer, model, tiny
    Path(sys.argv[1]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
