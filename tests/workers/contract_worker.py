"""The block contract and the own-loop start-up on real one-process DeepSpeed engines, run by
tests/integration/test_block_contract.py.

    python tests/workers/contract_worker.py OUT.json

No launcher and no process group: ``megaraptr.initialize`` must start one itself. Cases: a
correct own block (trains two skipping steps), a block marked but not decorated (refused before
DeepSpeed builds anything), and a decorated block the model calls around its forward (the
first step that skips layers stops with one line).
"""
from __future__ import annotations

import json
import sys

import torch
from torch import nn

import megaraptr
from megaraptr.errors import ConfigError

CONFIG = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
          "raptr": {"enabled": True, "schedule": "2-4", "seed": 3}}


class Block(nn.Module):
    def __init__(self, layer_id: int, decorated: bool = True):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        megaraptr.mark_block(self, layer_id)
        if not decorated:
            self.forward = self.compute  # an instance forward without @skippable

    @megaraptr.skippable
    def forward(self, x):
        return self.compute(x)

    def compute(self, x):
        return x + torch.tanh(self.fc(x)) * megaraptr.residual_scale(self)


class Model(nn.Module):
    def __init__(self, decorated: bool = True, around: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(i, decorated) for i in range(4))
        self.around = around

    def forward(self, x, y):
        for block in self.blocks:
            x = block.compute(x) if self.around else block(x)  # around: bypasses the skip
        return ((x - y) ** 2).mean()


def batch(step: int) -> dict:
    gen = torch.Generator().manual_seed(step)
    return {"x": torch.randn(2, 16, generator=gen), "y": torch.randn(2, 16, generator=gen)}


def case(**model_kwargs) -> dict:
    torch.manual_seed(0)
    try:
        engine, *_ = megaraptr.initialize(model=Model(**model_kwargs), config=CONFIG,
                                          total_steps=4)
    except ConfigError as err:
        return {"stage": "initialize", "error": str(err),
                "process_group": torch.distributed.is_initialized()}
    steps = []
    try:
        for _ in range(2):
            result = engine.train_step([batch(engine.applied_steps + 1)])
            steps.append(list(result.mask.active))
    except ConfigError as err:
        return {"stage": "train", "error": str(err), "steps": steps}
    return {"stage": "done", "steps": steps, "skips": [b.raptr_skips for b in engine.blocks]}


def main() -> None:
    out = {"undecorated": case(decorated=False)}  # before any process group exists
    out.update(ok=case(), around=case(around=True))
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
