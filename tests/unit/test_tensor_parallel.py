"""Tensor parallelism without a process group: the layout arithmetic (against DeepSpeed's own
topology), the one-line refusals, the shards (recombined by hand, they give the unsplit
layer's output), the cost model's TP dimension and the simulator and config-tool flags."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from support import ROOT

from megaraptr.errors import CheckpointError, ConfigError
from megaraptr.kernels import resolve_kernels
from megaraptr.models import build_model
from megaraptr.planning.balance import Costs
from megaraptr.planning.layout import (Layout, check_layout, check_shape, check_tensor_parallel,
                                       tensor_parallel_size)
from megaraptr.planning.step_costs import REFERENCE
from megaraptr.planning.tp_costs import (Hardware, Shape, all_reduce_ms, layer_flops, parse_shape,
                                         shape_costs, with_tensor_parallel)
from megaraptr.runtime.resume_state import check_saved_tensor_parallel as check_checkpoint
from megaraptr.runtime.tp import apply_tensor_parallel
from megaraptr.tools import config as config_tool, simulate as simulate_tool

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("pp, tp, dp", [(1, 2, 1), (1, 2, 2), (2, 2, 1), (4, 8, 2), (2, 4, 3)])
def test_layout_numbers_ranks_as_deepspeeds_topology(pp, tp, dp):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    layout = Layout(tp, pp, dp)
    assert layout.world == topo.world_size()
    assert sorted(layout.tensor_groups()) == sorted(topo.get_axis_comm_lists("model"))
    assert sorted(layout.data_groups()) == sorted(topo.get_axis_comm_lists("data"))
    for rank in range(layout.world):
        coord = topo.get_coord(rank)
        assert layout.coords(rank) == (coord.pipe, coord.data, coord.model)
        assert layout.rank(*layout.coords(rank)) == rank


def test_tensor_parallel_size_and_layout_refusals():
    assert tensor_parallel_size({}) == 1
    assert tensor_parallel_size({"tensor_parallel": {"autotp_size": 0}}) == 1
    assert tensor_parallel_size({"tensor_parallel": {"autotp_size": 8}}) == 8
    with pytest.raises(ConfigError, match="autotp_size: '8'; allowed"):
        tensor_parallel_size({"tensor_parallel": {"autotp_size": "8"}})
    assert check_layout(world=64, tensor=8, pipeline=4) == Layout(8, 4, 2)
    with pytest.raises(ConfigError, match="world size 12 is not divisible by tensor parallel 8 "
                                          "x pipeline stages 1 = 8"):
        check_layout(world=12, tensor=8)
    check_shape(tensor=4, heads=32, ffn=11008, kv_heads=8)
    with pytest.raises(ConfigError, match="6 attention heads, not divisible by 4"):
        check_shape(tensor=4, heads=6, ffn=1024)
    with pytest.raises(ConfigError, match="2 key-value heads, not divisible by 4"):
        check_shape(tensor=4, heads=8, ffn=1024, kv_heads=2)
    with pytest.raises(ConfigError, match="1000 FFN width"):
        check_shape(tensor=16, heads=16, ffn=1000)


@pytest.mark.parametrize("config, pipeline, message", [
    ({"zero_optimization": {"stage": 3}}, False, "zero_optimization.stage: 3 with"),
    ({"fp16": {"enabled": True}}, False, "fp16.enabled: fp16 with"),
    ({"pipeline": {"pipe_partitioned": True}}, True, "pipeline.pipe_partitioned: true with"),
    ({"tensor_parallel": {"autotp_size": 2, "tp_overlap_comm": True}}, False,
     "tensor_parallel: tp_overlap_comm: DeepSpeed AutoTP options"),
])
def test_what_tensor_parallelism_refuses(config, pipeline, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_tensor_parallel(config, tensor=2, pipeline=pipeline)
    assert "\n" not in str(err.value)
    check_tensor_parallel(config, tensor=1, pipeline=pipeline)  # nothing to refuse without TP


def test_kernels_under_tensor_parallelism():
    assert resolve_kernels("auto", device="cuda", tensor_parallel=8).mode in ("fused", "eager")
    assert resolve_kernels("eager", device="cuda", tensor_parallel=8).mode == "eager"
    with pytest.raises(ConfigError, match='"compiled" does not run with tensor parallel 2'):
        resolve_kernels("compiled", device="cpu", tensor_parallel=2)


def test_a_checkpoint_of_another_tensor_parallel_size_is_refused():
    check_checkpoint({"version": 1}, 1, "ckpt")  # T = 1 checkpoints carry no key
    check_checkpoint({"tensor_parallel": 2}, 2, "ckpt")
    with pytest.raises(CheckpointError, match="ckpt was written with tensor_parallel.autotp_size "
                                              "2; this run has 4"):
        check_checkpoint({"tensor_parallel": 2}, 4, "ckpt")


def _shards(model, size):
    """``size`` copies of ``model``, copy r split as tensor rank r (no collective runs)."""
    out = []
    for rank in range(size):
        shard = copy.deepcopy(model)
        assert apply_tensor_parallel(shard, rank=rank, size=size, group=None) == 4
        out.append(shard)
    return out


def test_shards_recombine_into_the_unsplit_layer():
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=64, seq_len=16)  # 4 layers, 2 heads
    full = model.blocks[1]
    ranks = [m.blocks[1] for m in _shards(model, 2)]
    qkv = full.attn.qkv.weight.view(3, 2, 64, 128)  # (q|k|v, head, head_dim, in)
    for r, block in enumerate(ranks):
        assert block.attn.heads == 1 and block.attn.qkv.weight.shape == (192, 128)
        assert torch.equal(block.attn.qkv.weight.view(3, 1, 64, 128), qkv[:, r:r + 1])
        assert block.mlp.fc1.weight.tensor_model_parallel and block.mlp.fc1.bias.partition_dim == 0
        assert block.mlp.fc2.weight.partition_dim == 1
        assert not hasattr(block.mlp.fc2.bias, "tensor_model_parallel")  # replicated
        assert torch.equal(block.mlp.fc2.bias, full.mlp.fc2.bias)
    # the row-parallel sum, by hand: each rank's partial product, added, plus the bias once
    x = torch.randn(2, 16, 128)
    partial = [F.linear(F.gelu(b.mlp.fc1(x)), b.mlp.fc2.weight) for b in ranks]
    assert torch.allclose(sum(partial) + full.mlp.fc2.bias, full.mlp(x), atol=1e-5)
    heads = [b.attn.proj.weight for b in ranks]
    assert torch.equal(torch.cat(heads, dim=1), full.attn.proj.weight)


def test_parameters_keep_their_identity_and_hf_gpt2_shards_conv1d():
    from megaraptr.models.hf import build_hf_model

    torch.manual_seed(0)
    model = build_hf_model("hf:gpt2", vocab_size=64, seq_len=16)
    before = {id(p) for p in model.parameters()}
    apply_tensor_parallel(model, rank=1, size=2, group=None)
    assert {id(p) for p in model.parameters()} == before  # groups built earlier stay valid
    layer = model.transformer.h[0]
    assert layer.attn.c_attn.weight.shape == (128, 192) and layer.attn.c_attn.nf == 192
    assert layer.attn.split_size == 64 and layer.attn.num_heads == 1
    assert layer.mlp.c_fc.weight.shape == (128, 256)
    assert layer.mlp.c_proj.weight.shape == (256, 128)
    with pytest.raises(ValueError, match="already tensor-parallel"):
        apply_tensor_parallel(model, rank=1, size=2, group=None)


def test_unsplittable_models_are_refused_in_one_line():
    torch.manual_seed(0)
    model = build_model("bert", "tiny", vocab_size=64, seq_len=16)
    with pytest.raises(ConfigError, match="layer 0 has 2 .key-value. attention heads, not "
                                          "divisible by 4"):
        apply_tensor_parallel(model, rank=0, size=4, group=None)


def test_the_default_throughput_is_the_measured_gpt_1_3b_layer():
    ref = REFERENCE[("gpt", "1.3b")]  # 5.70 ms per layer, 8 x 1024 tokens, one H200
    shape = Shape(24, 2048, 16, 8192, seq_len=1024, micro_batch=8, gated=False)
    assert layer_flops(shape) / (ref.per_layer / 1e3) / 1e12 == pytest.approx(
        Hardware().tflops, rel=0.01)


def test_tensor_parallel_costs():
    assert with_tensor_parallel(Costs(4.0, 1.0, 2.0), 1, 9.0) == Costs(4.0, 1.0, 2.0)
    assert with_tensor_parallel(Costs(4.0, 1.0, 2.0), 4, 0.5) == Costs(1.5, 1.0, 2.0)
    hw = Hardware(tflops=100, tp_gbps=100, tp_latency_us=0)
    assert all_reduce_ms(1e9, 1, hw) == 0
    assert all_reduce_ms(1e9, 2, hw) == pytest.approx(10.0)  # 2 (T-1)/T x 1 GB / 100 GB/s
    shape = parse_shape("32x4096x32x11008", seq_len=4096)
    one, eight = shape_costs(shape, 1, hw), shape_costs(shape, 8, hw)
    assert one.all_reduce == 0 and one.costs.layer == pytest.approx(one.layer_compute)
    activation = 4096 * 4096 * 2
    assert eight.all_reduce == pytest.approx(4 * 2 * 7 / 8 * activation / 100e9 * 1e3)
    assert eight.costs.layer == pytest.approx(one.layer_compute / 8 + eight.all_reduce)
    assert eight.head == one.head  # replicated: every tensor rank computes the whole head
    with pytest.raises(ConfigError, match="--model-shape: 'x4096'"):
        parse_shape("x4096")


def test_simulator_takes_the_tensor_parallel_dimension(capsys):
    argv = ["--layers", "8", "--stages", "2", "--micro-batches", "4", "--schedule", "4-6-8",
            "--steps", "30", "--tensor-parallel", "2", "--allreduce-cost", "0.25",
            "--data-parallel", "3"]
    result = simulate_tool.run(simulate_tool.parse(argv))
    assert result["config"]["layer_cost"] == 0.75
    assert result["layout"]["gpus"] == 12
    assert simulate_tool.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("layout: TP 2 x PP 2 x DP 3 = 12 GPUs; layer cost 1 / 2 + all-reduces "
                          "0.25")
    assert "ideal speedup (full model's ideal / the schedule's mean ideal): " in out
    assert simulate_tool.main(argv[:10]) == 0  # without the TP flags: the output as before
    plain = capsys.readouterr().out
    assert plain.startswith("L=8 layers, S=2 pipeline stages") and "layout" not in plain
    assert "ideal speedup" not in plain
    shaped = simulate_tool.parse(["--model-shape", "32x4096x32x11008", "--seq-len", "4096",
                                  "--tensor-parallel", "8", "--stages", "4"])
    assert shaped.layers == 32
    assert simulate_tool.main(["--model-shape", "32x4096x32x11008", "--tensor-parallel",
                               "3"]) == 2
    assert "--tensor-parallel: 3: 32 heads and FFN 11008" in capsys.readouterr().err


def _tp_config(tmp_path, **extra):
    config = json.loads((ROOT / "ds_configs" / "gpt_medium_raptr_zero1.json").read_text())
    config.update(tensor_parallel={"autotp_size": 4}, **extra)
    path = tmp_path / "tp.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_config_tool_validates_and_explains_the_layout(tmp_path, capsys):
    path = _tp_config(tmp_path)
    base = ["--model", "gpt", "--size", "medium"]
    assert config_tool.main(["validate", path] + base) == 0
    assert capsys.readouterr().out.rstrip().endswith(", TP 4 x PP 1 x DP 1 = 4 ranks")
    assert config_tool.main(["explain", path] + base + ["--world-size", "32",
                                                        "--pipeline-stages", "2"]) == 0
    assert "parallel: TP 4 x PP 2 x DP 4 = 32 ranks" in capsys.readouterr().out
    assert config_tool.main(["validate", path] + base + ["--world-size", "6"]) == 2
    assert capsys.readouterr().err.strip() == (
        "megaraptr-config: error: tensor_parallel.autotp_size: world size 6 is not divisible "
        "by tensor parallel 4 x pipeline stages 1 = 4; allowed: a world size that is a "
        "multiple of T x P")
    assert config_tool.main(["validate", path, "--model", "gpt", "--size", "1.6b"]) == 2
    assert "gpt has 18 attention heads, not divisible by 4" in capsys.readouterr().err
    own = ["--layers", "24", "--world-size", "8"]  # your own model: initialize's checks
    assert config_tool.main(["validate", path] + own) == 0
    assert capsys.readouterr().out.rstrip().endswith(", TP 4 x PP 1 x DP 2 = 8 ranks")
    assert config_tool.main(["validate", path, "--layers", "24", "--world-size", "6"]) == 2
    assert "world size 6 is not divisible by tensor parallel 4" in capsys.readouterr().err
    zero3 = _tp_config(tmp_path, zero_optimization={"stage": 3})  # the same file, rewritten
    assert config_tool.main(["validate", zero3] + base) == 2
    assert "zero_optimization.stage: 3 with tensor_parallel.autotp_size 4" in \
        capsys.readouterr().err
    assert config_tool.main(["validate", zero3, "--layers", "24"]) == 2
    assert "zero_optimization.stage: 3 with" in capsys.readouterr().err


@pytest.mark.parametrize("load", ["dir", "auto"])
def test_training_refuses_a_checkpoint_of_another_tensor_parallel_size(tmp_path, capsys, load):
    """Before anything is built, on the checkpoint the run would resume (--load DIR or
    --load auto's pick): its T must be the config's."""
    save = tmp_path / "ckpt"
    (save / "step5").mkdir(parents=True)
    (save / "latest").write_text("step5")
    state = {"raptr": {"version": 1, "schedule_fingerprint": "another", "seed": 0,
                       "schedule": "another", "tensor_parallel": 2}}  # a TP 2 run's state
    torch.save(state, save / "step5" / "mp_rank_00_model_states.pt")
    where = ["--load", str(save)] if load == "dir" else ["--load", "auto", "--save", str(save)]
    argv = ["validate", _tp_config(tmp_path), "--model", "gpt", "--size", "medium",
            "--override-raptr-schedule"] + where
    assert config_tool.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"megaraptr-config: error: {save / 'step5'} was written with "
        "tensor_parallel.autotp_size 2; this run has 4: each rank's files hold its shards, so "
        "resume with autotp_size 2")
    state["raptr"]["tensor_parallel"] = 4
    torch.save(state, save / "step5" / "mp_rank_00_model_states.pt")
    assert config_tool.main(argv) == 0
    assert capsys.readouterr().out.startswith("ok: ")
