"""Tests of megaraptr.kernels: the fused residual add, compiled blocks, auto, fused optimizers.

CPU only. torch.compile runs with the aot_eager backend (dynamo and AOT autograd as with
inductor, without code generation), and once with inductor for numerics. The Triton kernel
runs where Triton is importable (here under ``TRITON_INTERPRET=1``); on a GPU the benchmark
(``megaraptr.bench.gpu``) checks it against the same reference.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from megaraptr.core.mask import LayerMask
from megaraptr.errors import ConfigError
from megaraptr.kernels import (apply_kernels, compile_block, fused_optimizer, resolve_kernels,
                               select, swap_layer_norms)
from megaraptr.kernels.residual import fallback_scaled_add, reference_scaled_add, residual_add
from megaraptr.methods import parse_raptr_block
from megaraptr.models import build_model

MASK = LayerMask((True, False, True, True), (1.0, 0.0, 2.0, 1.0))  # one skipped, one scaled


def _model(name="bert", checkpoint="none", mode=None, backend="aot_eager"):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=500, seq_len=32, checkpoint=checkpoint)
    if mode == "compiled":
        for block in model.blocks:
            compile_block(block, backend)
    return model


# -- the scaled residual add -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_add_forms_and_the_fallback_against_the_reference(dtype):
    g = torch.Generator().manual_seed(0)
    x, b = (torch.randn(3, 17, 64, generator=g).to(dtype) for _ in range(2))
    assert torch.equal(residual_add(x, b, None), x + b)
    assert torch.equal(residual_add(x, b, 1.0), x + b)  # the eager reference, unchanged
    assert torch.equal(residual_add(x, b, 2.5), x + 2.5 * b)
    for value in (0.75, 4 / 3, 4.0):
        scale = torch.tensor(value)
        out = residual_add(x, b, scale)
        assert torch.equal(out, fallback_scaled_add(x, b, scale))  # no Triton on CPU
        # the fallback rounds twice (product, then sum): within half an ulp of each
        ref = reference_scaled_add(x, b, value).double()
        bound = torch.finfo(dtype).eps * (value * b.double().abs() + ref.abs())
        assert ((out.double() - ref).abs() <= bound).all()
    xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
    grad = torch.randn(xr.shape, generator=g).to(dtype)
    residual_add(xr, br, torch.tensor(4 / 3)).backward(grad)
    assert torch.equal(xr.grad, grad)
    torch.testing.assert_close(br.grad, reference_scaled_add(torch.zeros_like(grad), grad, 4 / 3))


# -- compiled blocks ---------------------------------------------------------------------------


# -- choosing kernels --------------------------------------------------------------------------

def test_auto_picks_the_fastest_available_path_per_device(monkeypatch):
    assert resolve_kernels("auto", device="cpu").mode == "fused"
    assert resolve_kernels("auto", device="mps").mode == "eager"
    monkeypatch.setattr(select, "triton_available", lambda: True)
    cuda = resolve_kernels("auto", device="cuda", zero_stage=2)
    assert (cuda.mode, cuda.compile_backend, cuda.triton) == ("compiled", "inductor", True)
    assert resolve_kernels("auto", device="cuda", zero_stage=3).mode == "fused"
    monkeypatch.setattr(select, "triton_available", lambda: False)
    assert resolve_kernels("auto", device="cuda").mode == "fused"
    for mode in ("eager", "fused", "compiled"):
        assert resolve_kernels(mode, device="cpu").mode == mode


def _one_line(err: Exception, key: str) -> str:
    message = str(err)
    assert "\n" not in message and message.startswith(key + ": "), message
    return message


def test_bad_kernels_settings_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError) as info:
        parse_raptr_block({"kernels": "fast"})
    assert "'eager', 'fused', 'compiled' or 'auto'" in _one_line(info.value, "raptr.kernels")
    assert parse_raptr_block({}).kernels == "eager"
    with pytest.raises(ConfigError) as info:
        resolve_kernels("compiled", device="cpu", zero_stage=3)
    assert "ZeRO-3" in _one_line(info.value, "raptr.kernels")
    monkeypatch.setattr(select, "triton_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        resolve_kernels("compiled", device="cuda")
    assert "needs Triton" in _one_line(info.value, "raptr.kernels")
    with pytest.raises(ConfigError) as info:
        resolve_kernels("fastest", device="cpu", key="--kernels")
    assert "allowed: eager, fused, compiled, auto" in _one_line(info.value, "--kernels")


ADAMW = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
         "zero_optimization": {"stage": 2}}


def test_fused_optimizer_choice():
    fused = resolve_kernels("fused", device="cpu")
    config, opt, choice = fused_optimizer(ADAMW, fused)
    assert choice == "torch AdamW(fused=True)" and opt is None
    assert config["optimizer"]["params"] == {"lr": 1e-3, "torch_adam": True, "fused": True}
    assert ADAMW["optimizer"]["params"] == {"lr": 1e-3, "torch_adam": True}  # not modified
    for params in ({"torch_adam": False}, {"torch_adam": True, "foreach": True},
                   {"torch_adam": True, "fused": False}):  # the config decided: kept
        kept = {"optimizer": {"type": "Adam", "params": params}}
        assert fused_optimizer(kept, fused) == (kept, None, "as configured")
    sgd = {"optimizer": {"type": "SGD", "params": {"lr": 1.0}}}
    assert fused_optimizer(sgd, fused)[2] == "as configured"
    assert fused_optimizer(ADAMW, resolve_kernels("eager", device="cpu"))[2] == "as configured"
    client = object()
    assert fused_optimizer(ADAMW, fused, client)[1] is client


def _fake_apex(monkeypatch) -> dict:
    """An importable 'apex' whose kernels are plain PyTorch and count their calls."""
    calls = {"layer_norm": 0}

    def fused_layer_norm_affine(x, weight, bias, shape, eps):
        calls["layer_norm"] += 1
        return F.layer_norm(x, shape, weight, bias, eps)

    class FusedAdam(torch.optim.AdamW):
        def __init__(self, params, adam_w_mode=True, **kwargs):
            calls["adam_w_mode"] = adam_w_mode
            super().__init__(params, **kwargs)

    modules = {"apex": types.ModuleType("apex"),
               "apex.normalization": types.ModuleType("apex.normalization"),
               "apex.normalization.fused_layer_norm": types.ModuleType("fused_layer_norm"),
               "apex.optimizers": types.ModuleType("apex.optimizers")}
    modules["apex.normalization.fused_layer_norm"].fused_layer_norm_affine = \
        fused_layer_norm_affine
    modules["apex.optimizers"].FusedAdam = FusedAdam
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_apex_is_used_where_importable(monkeypatch):
    calls = _fake_apex(monkeypatch)
    monkeypatch.setattr(select, "triton_available", lambda: True)
    plan = resolve_kernels("compiled", device="cuda")
    assert plan.apex_layer_norm
    config, build, choice = fused_optimizer(ADAMW, plan)
    assert choice == "apex FusedAdam" and "optimizer" not in config
    optimizer = build([{"params": [torch.nn.Parameter(torch.zeros(2))], "raptr_layer": 0}])
    assert calls["adam_w_mode"] is True and optimizer.param_groups[0]["lr"] == 1e-3
    model = _model("bert")
    keys = list(model.state_dict())
    ids = torch.randint(5, 500, (2, 32))
    expected = model(ids)
    installed = apply_kernels(model, model.blocks, plan)
    # compiled blocks keep their layer norms (inductor fuses them); the 3 outside are apex's
    assert installed == {"compiled_blocks": 4, "fused_blocks": 0, "eager_blocks": 0,
                         "apex_layer_norms": 3}
    assert list(model.state_dict()) == keys
    for block in model.blocks:
        block.fast = None  # run the blocks eagerly here: inductor would want CUDA
    torch.testing.assert_close(model(ids), expected)
    assert calls["layer_norm"] == 3
    assert swap_layer_norms(_model("gpt")) == 2 * 4 + 1  # all of them without compiled blocks


# -- the DeepSpeed engine with fast kernels ----------------------------------------------------



@pytest.mark.parametrize("scale", [1.5, 4 / 3])
def test_the_gpu_checks_bound_tells_one_rounding_from_two(scale):
    # the bound megaraptr.bench.kernel_check holds the Triton kernel to on a GPU: x + s * b in
    # float32 rounded once to bfloat16 (emulated here with torch's round-to-nearest) is within
    # it everywhere; eager's two roundings (the product to bfloat16 first) are not
    from megaraptr.bench.kernel_check import bounds

    g = torch.Generator().manual_seed(2)
    x, b = (torch.randn(50_000, generator=g).to(torch.bfloat16) for _ in range(2))
    s = torch.tensor(scale)
    exact, bound = bounds(x, b, float(s))
    once = (x.float() + s * b.float()).to(torch.bfloat16)
    assert bool(((once.double() - exact).abs() <= bound).all())
    outside = float(((fallback_scaled_add(x, b, s).double() - exact).abs() > bound).double().mean())
    assert outside > 0.05, outside
    x32, b32 = torch.randn(50_000, generator=g), torch.randn(50_000, generator=g)
    exact, bound = bounds(x32, b32, float(s))  # float32: the two float32 roundings
    assert bool(((x32 + s * b32).double() - exact).abs().le(bound).all())
