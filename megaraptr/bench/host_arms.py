"""The arms of the host-overhead benchmark: one training step each, built side by side.

An arm owns one model and one way of stepping it:

- ``plain``: a plain PyTorch loop (``clip_grad_norm_``, the loss read to the host),
  training a fresh random subset of exactly k layers each step (skipped layers get no
  gradient and no optimizer work): the ideal;
- ``deepspeed``: plain DeepSpeed at one ZeRO stage, no megaraptr (``deepspeed.initialize`` with
  the model's two parameter groups), the whole model;
- ``megaraptr``: ``megaraptr.initialize`` at one ZeRO stage, a RAPTR engine stepped with
  ``train_step``: k < L is a stage of exactly k random layers, k = L its full-model stage
  (reached after one subnetwork step).

Every arm steps torch's fused AdamW (what ``"kernels": "auto"`` picks), so that no arm reads
Adam's step counter to the host: the unfused torch optimizers call ``.item()`` on it for each
parameter or group, which would be counted as host syncs here although on a GPU it is a CPU
tensor.

:func:`install_phases` wraps the methods each phase is made of (:mod:`megaraptr.bench.host_probe`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import megaraptr
from megaraptr.bench.host_probe import PhaseClock
from megaraptr.core.block import find_blocks, set_layer_mask
from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.models import MODELS, model_config, optimizer_groups

LR = 1e-4


@dataclass
class Shape:
    """The model and batch every arm trains (one fixed batch of random tokens)."""

    model: str
    size: str
    num_layers: int
    vocab_size: int
    seq_len: int
    micro_batch: int
    precision: str
    device: str
    clip: float
    total_steps: int
    seed: int = 1234
    batch: dict = field(default_factory=dict)

    def build(self, num_layers: Optional[int] = None):
        """A fresh model (same seed for every arm), optionally of another depth."""
        torch.manual_seed(self.seed)
        cfg = model_config(self.size, vocab_size=self.vocab_size, seq_len=self.seq_len)
        cfg = dataclasses.replace(cfg, num_layers=num_layers or self.num_layers)
        return MODELS[self.model](cfg).to(self.device)

    def make_batch(self) -> dict:
        gen = torch.Generator().manual_seed(self.seed)
        ids = torch.randint(5, self.vocab_size, (self.micro_batch, self.seq_len), generator=gen)
        labels = torch.roll(ids, -1, 1) if self.model == "gpt" else ids.masked_fill(
            torch.rand(ids.shape, generator=gen) > 0.15, -100)
        self.batch = {"input_ids": ids.to(self.device), "labels": labels.to(self.device)}
        return self.batch


def raptr_block(k: int, L: int, total_steps: int, seed: int) -> dict:
    """Exactly k random layers per step for the whole run (k = L: one step at L/2, then the
    full-model stage), no fixed layers, no consistency check."""
    first = k if k < L else L // 2
    steps = total_steps - 1 if k < L else 1
    return {"enabled": True, "sampling": "exact", "fixed_layers": [], "seed": seed,
            "schedule": [{"layers": first, "steps": steps}, {"layers": L}],
            "consistency_check_interval": 0}


def ds_config(shape: Shape, zero: int, raptr: Optional[dict] = None) -> dict:
    config = {"train_micro_batch_size_per_gpu": shape.micro_batch,
              "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
              "gradient_clipping": shape.clip, "wall_clock_breakdown": False,
              "optimizer": {"type": "AdamW", "params": {"lr": LR, "torch_adam": True,
                                                        "fused": True}},
              "zero_optimization": {"stage": zero}}
    if shape.precision == "bf16":
        config["bf16"] = {"enabled": True}
    if raptr is not None:
        config["raptr"] = raptr
    return config


@dataclass
class Arm:
    """One arm: its name in the report, what it is, and its step."""

    name: str
    kind: str
    zero: Optional[int]
    k: int
    depth: int
    """Layers of this arm's model (the shape's, or L/2 for the ``half-depth`` arms)."""
    step: Callable[[], None] = None
    engine: object = None
    model: object = None


class PlainStep:
    """One plain PyTorch step on exactly k random layers (the same schedule and seed as the
    megaraptr arms)."""

    def __init__(self, shape: Shape, k: int):
        self.shape, self.model = shape, shape.build().train()
        self.blocks = find_blocks(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(optimizer_groups(self.model), lr=LR, fused=True)
        L = shape.num_layers
        schedule = build_schedule(parse_raptr_block(raptr_block(k, L, shape.total_steps,
                                                                shape.seed)),
                                  num_layers=L, total_steps=shape.total_steps)
        self.sampler, self.step_index = SubnetworkSampler(schedule, shape.seed), 0

    def forward(self):
        with torch.autocast(self.shape.device, dtype=torch.bfloat16,
                            enabled=self.shape.precision == "bf16"):
            return self.model(**self.shape.batch)

    def backward(self, loss):
        loss.backward()

    def clip(self):
        torch.nn.utils.clip_grad_norm_(self.params, self.shape.clip)

    def optimizer_step(self):
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def __call__(self):
        self.step_index += 1
        set_layer_mask(self.blocks, self.sampler.mask(self.step_index))
        loss = self.forward()
        self.backward(loss)
        if self.shape.clip > 0:
            self.clip()
        self.optimizer_step()
        float(loss.detach())  # the loss reaches the host, as in the engine's train_step


def build_arm(shape: Shape, kind: str, zero: Optional[int], k: int,
              depth: Optional[int] = None) -> Arm:
    """One arm (see the module docstring); ``depth`` builds a shallower model of the same
    width (megaraptr only, its full-model stage)."""
    L = depth or shape.num_layers
    name = {"plain": f"plain k={k}", "deepspeed": f"deepspeed z{zero}",
            "megaraptr": f"megaraptr z{zero} k={k}"}[kind]
    if depth:
        name = f"megaraptr z{zero} depth {depth}"
    arm = Arm(name, kind, zero, k, L)
    if kind == "plain":
        arm.step = PlainStep(shape, k)
        arm.model = arm.step.model
        return arm
    model = shape.build(L)
    if kind == "deepspeed":
        import deepspeed

        engine, *_ = deepspeed.initialize(model=model, model_parameters=optimizer_groups(model),
                                          config=ds_config(shape, zero))

        def step():
            loss = engine(**shape.batch)
            engine.backward(loss)
            engine.step()
            float(loss.detach())
    else:
        engine, *_ = megaraptr.initialize(
            model=model, model_parameters=optimizer_groups(model), total_steps=shape.total_steps,
            config=ds_config(shape, zero, raptr_block(min(k, L), L, shape.total_steps,
                                                      shape.seed)))

        def step():
            result = engine.train_step([shape.batch])
            if result.mask.num_active != min(k, L) and result.step > 1:
                raise RuntimeError(f"{name}: step {result.step} ran {result.mask.num_active} "
                                   f"layers, not {k}")
            float(result.loss)
    arm.engine, arm.model, arm.step = engine, model, step
    return arm


ENGINE_PHASES = {"forward": "forward", "backward": "backward",
                 "allreduce_gradients": "reduce", "clip_fp32_gradients": "norm",
                 "zero_grad": "zero_grad"}
OPTIMIZER_PHASES = {"has_overflow": "norm", "scaled_global_norm": "norm",
                    "_get_norm_groups": "norm", "clip_grad_norm": "norm",
                    "unscale_and_clip_grads": "unscale",
                    "flatten_dense_tensors_aligned": "flatten", "flatten": "flatten",
                    "_get_preflattened_grad_partition": "flatten",
                    "_update_model_bit16_weights": "all_gather", "zero_grad": "zero_grad"}
MEGARAPTR_PHASES = ("begin_step", "_result", "_rewarm_lr", "_before_optimizer_step")


def install_phases(clock: PhaseClock, arm: Arm) -> None:
    """Wrap the methods of ``arm`` that make up each phase (module functions are wrapped
    once, by :func:`install_module_phases`)."""
    if arm.kind == "plain":
        step = arm.step
        for name, phase in (("forward", "forward"), ("backward", "backward"),
                            ("clip", "norm"), ("optimizer_step", "optimizer")):
            clock.wrap(step, name, phase)
        return
    ds = getattr(arm.engine, "ds", arm.engine)
    for name, phase in ENGINE_PHASES.items():
        clock.wrap(ds, name, phase)
    for name, phase in OPTIMIZER_PHASES.items():
        if ds.optimizer is not ds.basic_optimizer:
            clock.wrap(ds.optimizer, name, phase)
    clock.wrap(ds.basic_optimizer, "step", "optimizer")
    if arm.kind == "megaraptr":
        for name in MEGARAPTR_PHASES:
            clock.wrap(arm.engine, name, "megaraptr")


def install_module_phases(clock: PhaseClock) -> None:
    """The all-gather of ZeRO-1/2 (a module function that both steps look up when called)."""
    from deepspeed.runtime.zero import stage_1_and_2

    clock.wrap(stage_1_and_2, "all_gather_dp_groups", "all_gather")
