"""Tests of megaraptr.core.block: the model-side contract (layer ids, the one setter, skipping).

Pure: no DeepSpeed, no process group; toy modules only (the reference models are in
test_models.py).
"""
import subprocess
import sys

import pytest
import torch
from torch import nn

from megaraptr.core.block import (check_block_contract, find_blocks, is_block, mark_block,
                                  residual_scale, set_layer_mask, skippable, unskipped)
from megaraptr.core.mask import LayerMask
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.models import build_model
from megaraptr.models.blocks import ModelConfig
from megaraptr.models.pipe import PipeBlock


class Toy(nn.Module):
    """A skippable residual block that counts its forward calls: x + s * (w * x + extra)."""

    def __init__(self, layer_id=None):
        super().__init__()
        self.weight = nn.Parameter(torch.full((3,), 2.0))
        self.calls = 0
        if layer_id is not None:
            mark_block(self, layer_id)

    @skippable
    def forward(self, x, extra=0.0, *, bias=0.0):
        self.calls += 1
        return x + residual_scale(self) * (self.weight * x + extra + bias)


def _stack(ids):
    return nn.Sequential(*[Toy(i) for i in ids])


# ---------------------------------------------------------------- marking and finding


def test_mark_block_sets_id_and_an_all_active_mask():
    block = Toy()
    assert not is_block(block)
    assert mark_block(block, 3) is block
    assert is_block(block)
    assert (block.layer_id, block.raptr_active, block.raptr_scale) == (3, True, 1.0)
    mark_block(block, torch.tensor(5))  # ids are coerced to a plain int
    assert block.layer_id == 5 and type(block.layer_id) is int


def test_find_blocks_orders_by_layer_id_not_by_position():
    model = nn.Module()
    model.first = nn.ModuleList([Toy(2), Toy(0)])
    model.second = nn.Sequential(nn.Linear(3, 3), Toy(3), nn.ModuleDict({"x": Toy(1)}))
    blocks = find_blocks(model)
    assert [b.layer_id for b in blocks] == [0, 1, 2, 3]
    assert blocks[0] is model.first[1] and blocks[3] is model.second[1]


def test_find_blocks_on_a_model_without_blocks():
    assert find_blocks(nn.Sequential(nn.Linear(2, 2))) == []


@pytest.mark.parametrize("ids", [[0, 0, 1], [0, 2], [1, 2, 3], [0, 1, 1, 2], [-1, 0]])
def test_find_blocks_rejects_duplicate_or_missing_ids(ids):
    with pytest.raises(ValueError, match="layer ids 0..L-1 exactly once"):
        find_blocks(_stack(ids))


def test_find_blocks_does_not_match_by_name_or_type():
    model = nn.Module()
    # Names that a substring or regex match would pick up, without the mark:
    model.layers = nn.ModuleList([Toy() for _ in range(12)])
    model.add_module("block_1", Toy())
    model.h = nn.ModuleList([nn.Linear(2, 2)])
    assert find_blocks(model) == []
    # A "layer_id" attribute alone does not make a block either, nor a non-int one.
    stray = nn.Linear(2, 2)
    stray.layer_id = 0
    odd = Toy(0)
    odd.layer_id = "0"
    model.stray, model.odd = stray, odd
    assert find_blocks(model) == []
    # Marking two of the twelve look-alikes finds exactly those, in id order, whatever the name.
    mark_block(model.layers[10], 0)
    mark_block(model.layers[1], 1)
    assert find_blocks(model) == [model.layers[10], model.layers[1]]


def test_blocks_are_found_in_their_submodules_too():
    outer = Toy(0)
    outer.inner = Toy(1)
    assert find_blocks(outer) == [outer, outer.inner]


# ---------------------------------------------------------------- set_layer_mask


def test_set_layer_mask_matches_blocks_by_layer_id():
    blocks = find_blocks(_stack(range(4)))
    mask = LayerMask((True, False, True, False), (1.0, 0.0, 2.5, 0.0))
    set_layer_mask(blocks, mask)
    assert [b.raptr_active for b in blocks] == [True, False, True, False]
    assert [b.raptr_scale for b in blocks] == [1.0, 0.0, 2.5, 0.0]
    set_layer_mask(blocks, None)
    assert all(b.raptr_active and b.raptr_scale == 1.0 for b in blocks)


def test_set_layer_mask_on_one_pipeline_stage_reads_the_global_entries():
    # A pipeline stage holds blocks 4..7 of 8 (in any order): each reads its own global entry.
    stage_blocks = [Toy(i) for i in (6, 4, 7, 5)]
    mask = LayerMask((True,) * 4 + (False, True, False, True), (1.0,) * 4 + (0.0, 3.0, 0.0, 1.5))
    set_layer_mask(stage_blocks, mask)
    assert {b.layer_id: (b.raptr_active, b.raptr_scale) for b in stage_blocks} == {
        4: (False, 0.0), 5: (True, 3.0), 6: (False, 0.0), 7: (True, 1.5)}


def test_set_layer_mask_leaves_no_trace_in_the_state_dict():
    model = _stack(range(3))
    keys = list(model.state_dict())
    set_layer_mask(find_blocks(model), LayerMask((True, False, True), (1.0, 0.0, 2.0)))
    assert list(model.state_dict()) == keys == ["0.weight", "1.weight", "2.weight"]
    assert not list(model.buffers())


# ---------------------------------------------------------------- skipping and scaling


def test_inactive_block_in_training_returns_its_input_object():
    block = Toy(0).train()
    set_layer_mask([block], LayerMask((False,), (0.0,)))
    x = torch.randn(3, requires_grad=True)
    out = block(x, 5.0, bias=1.0)
    assert out is x
    assert block.calls == 0  # the wrapped forward never ran


def test_active_block_runs_with_its_scale_and_passes_arguments_through():
    block = Toy(0).train()
    x = torch.tensor([1.0, 2.0, 3.0])
    set_layer_mask([block], LayerMask((True,), (2.5,)))
    out = block(x, 1.0, bias=0.5)
    assert block.calls == 1
    assert torch.equal(out, x + 2.5 * (2.0 * x + 1.0 + 0.5))
    set_layer_mask([block], None)
    assert torch.equal(block(x), x + 2.0 * x)


def test_eval_mode_runs_every_block_unscaled_whatever_the_mask():
    model = _stack(range(3))
    x = torch.tensor([1.0, -1.0, 0.5])
    model.eval()
    reference = model(x)
    for mask in (LayerMask((False,) * 3, (0.0,) * 3),
                 LayerMask((True, False, True), (4.0, 0.0, 4.0))):
        set_layer_mask(find_blocks(model), mask)
        assert torch.equal(model(x), reference)
    assert torch.equal(reference, x * 27.0)  # each block triples its input
    assert [b.calls for b in model] == [3, 3, 3]


def test_training_mode_applies_the_mask():
    model = _stack(range(3)).train()
    x = torch.tensor([1.0, -1.0, 0.5])
    set_layer_mask(find_blocks(model), LayerMask((True, False, True), (2.0, 0.0, 1.0)))
    # Block 0: x + 2 * 2x = 5x; block 1 skipped; block 2: 3 * 5x.
    assert torch.equal(model(x), 15.0 * x)
    assert [b.calls for b in model] == [1, 0, 1]


def test_residual_scale_is_one_in_eval_mode():
    block = Toy(0)
    set_layer_mask([block], LayerMask((True,), (2.5,)))
    assert residual_scale(block.train()) == 2.5
    assert residual_scale(block.eval()) == 1.0


def test_skipped_block_gets_no_gradient():
    model = _stack(range(3)).train()
    set_layer_mask(find_blocks(model), LayerMask((True, False, True), (1.0, 0.0, 1.0)))
    model(torch.ones(3)).sum().backward()
    assert model[0].weight.grad is not None and model[2].weight.grad is not None
    assert model[1].weight.grad is None


def test_skippable_keeps_the_wrapped_name_and_doc():
    assert Toy.forward.__name__ == "forward"
    assert Toy.forward.__wrapped__.__qualname__.endswith("Toy.forward")


def test_the_core_does_not_import_deepspeed():
    # The pure core must load (and these tests run) without DeepSpeed or a process group.
    code = ("import sys, megaraptr.core.config, megaraptr.core.schedule, megaraptr.core.sampler, "
            "megaraptr.core.block, megaraptr.models; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'deepspeed']; "
            "import torch.distributed as dist; "
            "assert not bad and not dist.is_initialized(), bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_contract_check_names_an_undecorated_marked_block():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            mark_block(self, 0)

        def forward(self, x):
            return x

    with pytest.raises(ConfigError, match=r"^model: .*Plain \(layer 0\) is marked with "
                                          r"megaraptr.mark_block but its forward is not "
                                          r"decorated with @megaraptr.skippable"):
        check_block_contract([Plain()])


def test_contract_check_accepts_the_reference_pipeline_and_own_blocks():
    check_block_contract(find_blocks(build_model("gpt", "tiny", vocab_size=64, seq_len=8)))
    cfg = ModelConfig(num_layers=2, hidden=8, heads=2, ffn=16, vocab_size=64, max_seq_len=8)
    check_block_contract([PipeBlock(cfg, 1, causal=True)])  # delegates to Block.forward


def test_a_skip_counts_itself():
    block = Toy(0)
    set_layer_mask([block], LayerMask((False,), (0.0,)))
    block.train()
    x = torch.ones(2, 3)
    assert block(x) is x and block.raptr_skips == 1
    assert unskipped([block], [0]) == [] and unskipped([block], [1]) == [block]


def test_a_model_without_marked_blocks_is_told_about_mark_block():
    config = parse_raptr_block({"enabled": True, "schedule": "2-4"})
    with pytest.raises(ConfigError, match=r"^model: needs at least one layer, got 0: mark each "
                                          r"transformer block with megaraptr.mark_block"):
        build_schedule(config, num_layers=len(find_blocks(nn.Linear(2, 2))), total_steps=4)
