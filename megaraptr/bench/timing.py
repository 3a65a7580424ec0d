"""The DeepSpeed loop of the step-time benchmark (driven by ``step_time``).

It walks the step plan of :mod:`megaraptr.planning.step_profile` (one raptr block: step 1 the
full model, untimed, then one stage per k, ascending, of ``warmup + steps`` steps each: exact
sampling with no fixed layers, so a fresh uniform subset of exactly k layers runs on every step,
and the first ``warmup`` steps of each stage are not timed). Since the ks ascend, the plan is
an ordinary, valid RAPTR schedule, so one DeepSpeed engine per ZeRO stage measures every k
through its own schedule and sampler (nothing is swapped). The plain-PyTorch loop there takes
each step's subnetwork from the same schedule and seed, so both paths train the same subsets
on the same batches. Run through ``python -m megaraptr.bench.step_time``.
"""
from __future__ import annotations

import torch

import megaraptr
from megaraptr.models import optimizer_groups
from megaraptr.planning.step_profile import (BETAS, EPS, LR, WEIGHT_DECAY, Phases, Plan,
                                             build_plan_model, loop, raptr_block, release)


def ds_config(plan: Plan, zero_stage: int) -> dict:
    """The DeepSpeed config of one ZeRO stage, with ``plan.extra_ds_config`` merged in."""
    params = {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY,
              "torch_adam": True}
    if plan.device == "cuda" and plan.kernels == "eager":
        params["fused"] = True  # passed through to torch.optim.AdamW with torch_adam
    config = {"train_micro_batch_size_per_gpu": plan.micro_batch,
              "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
              "wall_clock_breakdown": False,
              "optimizer": {"type": "AdamW", "params": params},
              "zero_optimization": {"stage": zero_stage},
              "raptr": raptr_block(plan)}
    if plan.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return merge(config, plan.extra_ds_config)


def merge(base: dict, extra: dict) -> dict:
    """``extra`` merged into a copy of ``base``, recursively for nested dicts."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and \
            isinstance(out.get(key), dict) else value
    return out


def run_deepspeed(plan: Plan, zero_stage: int, batches, vocab_size: int,
                  device: torch.device) -> dict:
    """DeepSpeed + megaraptr at one ZeRO stage: one engine walks the whole plan, each step
    timed around ``engine.train_step([batch])``; the engine is destroyed afterwards.

    Args and return value as :func:`run_plain`, plus ``zero_stage``.

    Raises:
        ConfigError: megaraptr refuses the configuration (e.g. a ZeRO stage it does not
            support yet); nothing was timed.
    """
    try:
        return _deepspeed(plan, zero_stage, batches, vocab_size, device)
    finally:
        release(device)


def _deepspeed(plan: Plan, zero_stage: int, batches, vocab_size: int,
               device: torch.device) -> dict:

    model = build_plan_model(plan, vocab_size)
    engine, *_ = megaraptr.initialize(model=model, model_parameters=optimizer_groups(model),
                                      config=ds_config(plan, zero_stage),
                                      total_steps=plan.total_steps, seed=plan.seed)
    phases = Phases(device, plan.breakdown)
    ds = engine.ds
    if plan.breakdown:  # instance attributes shadow the engine's methods for this run only
        ds.forward = phases.wrap("forward", ds.forward)
        ds.backward = phases.wrap("backward", ds.backward)
        ds.step = phases.wrap("step", ds.step)

    def step_fn(step: int, batch: dict) -> int:
        result = engine.train_step([batch])
        if result.step != step or not result.applied:
            raise RuntimeError(f"engine ran step {result.step} (applied {result.applied}), "
                               f"the plan expected step {step}")
        return result.mask.num_active

    try:
        return dict(loop(plan, batches, device, step_fn, phases), kernels=engine.kernels)
    finally:
        if hasattr(ds, "destroy"):
            ds.destroy()  # DeepSpeed's hooks and buffers, before the next engine is built


