"""Tests of megaraptr.kernels: the fused residual add, compiled blocks, auto, fused optimizers.

CPU only. torch.compile runs with the aot_eager backend (dynamo and AOT autograd as with
inductor, without code generation), and once with inductor for numerics. The Triton kernel
runs where Triton is importable, here under its interpreter (``TRITON_INTERPRET=1``; the test
extra installs triton): computed in float32 and converted to bfloat16 once, element for
element, and not as two roundings. The interpreter converts float32 to bfloat16 toward zero
(Triton 3.9.0's interpreter ignores ``fp_downcast_rounding``), so the check emulates that; on a
GPU, where the conversion rounds to nearest, the benchmark (``megaraptr.bench.gpu``) checks
the kernel within half a bfloat16 spacing of the float64 result.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import sys

import pytest
import torch
from support import ROOT, WORKERS, cpu_env, free_port, run

from megaraptr.core.block import set_layer_mask
from megaraptr.core.mask import LayerMask
from megaraptr.kernels import compile_block
from megaraptr.models import BertMLM, ModelConfig, build_model

MASK = LayerMask((True, False, True, True), (1.0, 0.0, 2.0, 1.0))  # one skipped, one scaled


class CountingBackend:
    """A torch.compile backend that counts graphs compiled and graph calls."""

    def __init__(self):
        self.graphs = self.calls = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def forward(*args):
            self.calls += 1
            return gm.forward(*args)
        return forward


def _model(name="bert", checkpoint="none", mode=None, backend="aot_eager"):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=500, seq_len=32, checkpoint=checkpoint)
    if mode == "compiled":
        for block in model.blocks:
            compile_block(block, backend)
    return model


def _loss_and_grads(model, mask, seed=3):
    set_layer_mask(model.blocks, mask)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(5, 500, (2, 32), generator=g)
    y = torch.full_like(x, -100)
    y[:, ::3] = x[:, ::3]
    if model.kind == "causal":
        y = torch.roll(x, -1, 1)
    model.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


# -- the scaled residual add -------------------------------------------------------------------


TRITON_CHECK = r"""
import torch
from megaraptr.kernels.residual import fallback_scaled_add, triton_scaled_add


def to_bf16_toward_zero(v):  # float32 -> bfloat16 keeping the upper 16 bits (truncation)
    return (v.contiguous().view(torch.int32) >> 16).to(torch.int16).view(torch.bfloat16)


g = torch.Generator().manual_seed(1)
n = 30001  # not a multiple of BLOCK
for scale in (1.5, 4 / 3):  # 1.5: exact in bfloat16 too, so only the roundings differ
    s = torch.tensor(scale)  # float32, as the fast paths pass it
    x, b, grad = (torch.randn(n, generator=g).to(torch.bfloat16) for _ in range(3))
    xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
    y = triton_scaled_add(xr, br, s)
    y.backward(grad)
    # one rounding: x + s * b computed in float32 and converted to bfloat16 once (the
    # interpreter converts toward zero; a GPU rounds to nearest even), for every element
    assert torch.equal(y, to_bf16_toward_zero(x.float() + s * b.float()))
    # not two: rounding the product to bfloat16 first (what eager does) gives other values
    twice = to_bf16_toward_zero(x.float() + to_bf16_toward_zero(s * b.float()).float())
    differ = float((y != twice).double().mean())
    assert differ > 0.05, differ  # measured 0.1-0.3
    assert not torch.equal(fallback_scaled_add(x, b, s), y)  # eager: two roundings (nearest)
    assert torch.equal(xr.grad, grad)
    assert torch.equal(br.grad, to_bf16_toward_zero(s * grad.float()))
    x32, b32 = torch.randn(n, generator=g), torch.randn(n, generator=g)
    # float32: the product and the sum each rounded in float32, as eager does (no FMA here)
    assert torch.equal(triton_scaled_add(x32, b32, s), x32 + s * b32)
print("triton kernel ok")
"""


def test_triton_kernel_rounds_once_under_its_cpu_interpreter():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not importable here: pip install triton (3.9.0 installs and runs "
                    "its interpreter on a CPU); the GPU benchmark checks the kernel on CUDA")
    proc = run([sys.executable, "-c", TRITON_CHECK], timeout=300,
               env=cpu_env(TRITON_INTERPRET=1))
    assert proc.stdout.strip().endswith("triton kernel ok")


# -- compiled blocks ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bert", "gpt"])
def test_compiled_blocks_equal_the_eager_blocks(name):
    loss, grads = _loss_and_grads(_model(name), MASK)
    loss_c, grads_c = _loss_and_grads(_model(name, mode="compiled"), MASK)
    assert torch.equal(loss, loss_c)
    for key, grad in grads.items():
        if key.startswith("blocks.1."):  # the skipped block: no gradient either way
            assert grad is None and grads_c[key] is None, key
        else:
            assert torch.equal(grad, grads_c[key]), key


def test_inductor_compiled_block_matches_eager_numerically():
    loss, grads = _loss_and_grads(_model("bert"), MASK)
    loss_c, grads_c = _loss_and_grads(_model("bert", mode="compiled", backend="inductor"), MASK)
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    for key, grad in grads.items():
        if grad is not None:
            torch.testing.assert_close(grads_c[key], grad, rtol=1e-4, atol=1e-6)


def test_no_recompiles_across_random_subsets_and_scales_and_skips_cost_nothing():
    torch._dynamo.reset()  # graphs other tests compiled for Block.layer count against its limit
    backend = CountingBackend()
    torch.manual_seed(0)  # 12 narrow layers: enough distinct subsets
    model = BertMLM(ModelConfig(num_layers=12, hidden=32, heads=2, ffn=64, vocab_size=500,
                                max_seq_len=32))
    for block in model.blocks:
        compile_block(block, backend)
    rng = random.Random(0)
    subsets, scales, active_runs = set(), set(), 0
    for step in range(14):
        p = (0.25, 0.3, 0.5, 0.7, 0.75, 0.9, 1.0)[step % 7]  # keep prob; scale 1/p
        active = [True] + [rng.random() < p for _ in range(10)] + [True]
        mask = LayerMask(tuple(active), tuple((1.0 if i in (0, 11) else 1 / p) if on else 0.0
                                              for i, on in enumerate(active)))
        _loss_and_grads(model, mask, seed=step)
        subsets.add(tuple(active))
        scales.add(p)
        active_runs += sum(active)
    assert len(subsets) >= 10 and len(scales) >= 5
    assert backend.graphs == 2  # one unscaled graph, one with the scale as a tensor input
    assert backend.calls == active_runs  # each active block ran once; skipped ones never
    model.eval()
    with torch.no_grad():  # eval (the full model, unscaled, no grad) adds one graph
        model(torch.randint(5, 500, (2, 32)))
    assert backend.graphs == 3


@pytest.mark.parametrize("checkpoint", ["torch", "deepspeed"])
def test_activation_checkpointing_of_compiled_blocks(checkpoint):
    if checkpoint == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    loss, grads = _loss_and_grads(_model("bert", mode="compiled"), MASK)
    loss_c, grads_c = _loss_and_grads(_model("bert", checkpoint, mode="compiled"), MASK)
    assert torch.equal(loss, loss_c)
    for key, grad in grads.items():
        assert (grad is None and grads_c[key] is None) or torch.equal(grad, grads_c[key]), key


# -- choosing kernels --------------------------------------------------------------------------


def _one_line(err: Exception, key: str) -> str:
    message = str(err)
    assert "\n" not in message and message.startswith(key + ": "), message
    return message


def test_training_refuses_compiled_under_zero3_before_building_anything(tmp_path, capsys):
    from megaraptr.tools.train import main

    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3},
              "raptr": {"enabled": True, "schedule": "2-3-4", "kernels": "compiled"}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    assert main(["--deepspeed_config", str(path), "--train-steps", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "raptr.kernels" in err[0] and "ZeRO-3" in err[0], err
    config["raptr"]["kernels"] = "eager"  # the flag overrides the config, and is checked too
    path.write_text(json.dumps(config))
    assert main(["--deepspeed_config", str(path), "--train-steps", "5", "--kernels",
                 "compiled"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["--deepspeed_config", str(path), "--train-steps", "5", "--kernels", "fast"])
    assert info.value.code == 2
    config["zero_optimization"]["stage"] = 1  # pipelines: eager only ("auto" resolves to it)
    path.write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["--deepspeed_config", str(path), "--train-steps", "5", "--kernels", "fused",
                 "--pipeline-stages", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith('allowed: "eager" or "auto" (eager there)'), err


ADAMW = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
         "zero_optimization": {"stage": 2}}


# -- the DeepSpeed engine with fast kernels ----------------------------------------------------

@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / "runs.json"
    env = cpu_env(MEGARAPTR_COMPILE_BACKEND="aot_eager", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(free_port()),
                  PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]))
    run([sys.executable, WORKERS / "kernels_worker.py", out], timeout=240, env=env)
    return json.loads(out.read_text())


def test_engine_fast_paths_train_like_eager_and_keep_skipped_layers_frozen(engine_runs):
    for name, case in engine_runs.items():
        if name.endswith("-error"):
            continue
        mode = case["kernels"]["mode"]
        eager = engine_runs[name.rsplit("-", 1)[0] + "-eager"]
        losses = [s["loss"] for s in case["steps"]]
        rel = 1e-2 if "bf16" in name else 1e-5  # fused and foreach AdamW round differently
        assert losses == pytest.approx([s["loss"] for s in eager["steps"]], rel=rel), name
        assert [s["active"] for s in case["steps"]] == [s["active"] for s in eager["steps"]]
        for step in case["steps"]:  # weights, fp32 master, Adam state: frozen iff skipped
            assert step["unchanged"] == [not on for on in step["active"]], name
        if mode != "eager":
            assert case["kernels"]["optimizer"] == "torch AdamW(fused=True)", name
            assert set(case["optimizer_fused"]) == {True}, name
        assert case["graphs"] <= (2 if mode == "compiled" else 0), name


def test_engine_compiled_graphs_survive_changing_subsets_and_scales(engine_runs):
    scaled = engine_runs["0-fp32-inverse_keep_prob-compiled"]
    assert scaled["kernels"]["compiled_blocks"] == 4
    assert len({s["scale"] for s in scaled["steps"]}) >= 3
    assert len({tuple(s["active"]) for s in scaled["steps"]}) >= 4
    assert scaled["graphs"] == 2  # unscaled and scaled: no recompile per subset or value
    assert engine_runs["1-bf16-none-compiled"]["graphs"] == 1
    assert engine_runs["3-fp32-none-auto"]["kernels"]["mode"] == "fused"  # auto under ZeRO-3
    assert engine_runs["3-fp32-none-auto"]["kernels"]["fused_blocks"] == 4
    assert "ZeRO-3" in _one_line(engine_runs["3-compiled-error"], "raptr.kernels")
