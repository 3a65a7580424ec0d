"""Tests of megaraptr.models.hf: transformers' BERT, GPT-2 and Llama under RAPTR.

For each model: the all-active mask gives exactly the unadapted model; a skipped layer runs
no submodule and the output equals the model with that layer removed; eval runs every layer;
residual scaling equals scaling the branch projections; state_dict keys do not change. Then
the entry point: bad input exits 2 in one line, and 2-process ZeRO-2 runs train. Built from
small configs only (HF_HUB_OFFLINE=1): nothing is downloaded.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")

from megaraptr.core.block import find_blocks, set_layer_mask  # noqa: E402
from megaraptr.core.mask import LayerMask  # noqa: E402
from megaraptr.errors import ConfigError  # noqa: E402
from megaraptr.models.hf import (STACKS, adapt, build_hf_model, causal_inputs,  # noqa: E402
                                 find_stack, hf_config, hf_model)

NAMES = ("bert", "gpt2", "llama")
VOCAB, SEQ = 97, 16


def pair(name: str):
    """(unadapted reference, adapted copy) of the same weights, in train mode."""
    torch.manual_seed(0)
    ref = hf_model(hf_config(f"hf:{name}", vocab_size=VOCAB, seq_len=SEQ))
    model = adapt(copy.deepcopy(ref))
    return ref.train(), model.train()


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, VOCAB, (2, SEQ + 1), generator=g)
    return {"input_ids": window[:, :-1].contiguous(), "labels": window[:, 1:].contiguous()}


def mask(active, scale=None) -> LayerMask:
    return LayerMask(tuple(active), tuple(scale or [1.0] * len(active)))


def without_layers(ref: nn.Module, name: str, keep) -> nn.Module:
    """A copy of ``ref`` whose layer stack holds only the layers ``keep``."""
    model = copy.deepcopy(ref)
    parent, _, attr = STACKS[name].rpartition(".")
    owner = model.base_model.get_submodule(parent) if parent else model.base_model
    setattr(owner, attr, nn.ModuleList([getattr(owner, attr)[i] for i in keep]))
    return model


def count_calls(model: nn.Module):
    """Per layer, the number of forward calls of its submodules (filled as the model runs)."""
    counts = {}
    for layer in find_blocks(model):
        counts[layer.layer_id] = 0
        for sub in list(layer.modules())[1:]:
            sub.register_forward_hook(
                lambda *_, i=layer.layer_id: counts.__setitem__(i, counts[i] + 1))
    return counts


# ------------------------------------------------------------------ the adapter, per model
@pytest.mark.parametrize("name", NAMES)
def test_full_mask_is_exactly_the_model_and_names_are_kept(name):
    ref, model = pair(name)
    assert list(model.state_dict()) == list(ref.state_dict())
    assert [b.layer_id for b in find_blocks(model)] == list(range(4))
    assert find_blocks(model)[0] is find_stack(model)[0]
    inputs = batch()
    for train in (True, False):
        ref.train(train), model.train(train)
        a, b = ref(**inputs), model(**inputs)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss), (name, train)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("active", [(True, False, True, False), (False, True, False, True)])
def test_skipped_layers_run_nothing_and_equal_the_model_without_them(name, active):
    ref, model = pair(name)
    assert find_blocks(model)[0].raptr_format.known  # layer 0 may be skipped: returns a tensor
    counts = count_calls(model)
    set_layer_mask(find_blocks(model), mask(active))
    out = model(**batch())
    out.loss.backward()
    kept = [i for i in range(4) if active[i]]
    for i in range(4):
        assert (counts[i] > 0) == active[i], counts
        grads = [p.grad is not None for p in find_blocks(model)[i].parameters()]
        assert grads == [active[i]] * len(grads), i
    expected = without_layers(ref, name, kept).train()(**batch())
    assert torch.equal(out.logits, expected.logits), name
    # eval mode runs the full model, whatever the mask says
    model.eval(), ref.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch()).logits, ref(**batch()).logits)
    assert counts[1] > 0 and counts[3] > 0


@pytest.mark.parametrize("name", NAMES)
def test_residual_scale_multiplies_each_branch_output(name):
    ref, model = pair(name)
    set_layer_mask(find_blocks(model), mask([True] * 4, [1.0, 2.0, 1.0, 2.0]))
    scaled = copy.deepcopy(ref)  # the same scale, folded into the branch projections
    for i in (1, 3):
        layer = find_stack(scaled)[i]
        for branch in find_blocks(model)[i].raptr_branches:
            with torch.no_grad():
                for p in layer.get_submodule(branch).parameters():
                    p.mul_(2.0)  # a power of two: exact in floating point
    assert len(find_blocks(model)[1].raptr_branches) == 2
    assert torch.equal(model(**batch()).logits, scaled(**batch()).logits)
    model.eval(), ref.eval()  # eval: unscaled
    assert torch.equal(model(**batch()).logits, ref(**batch()).logits)


def test_gradient_checkpointing_replays_the_step_subnetwork():
    torch.manual_seed(0)
    plain = build_hf_model("hf:llama", vocab_size=VOCAB, seq_len=SEQ).train()
    torch.manual_seed(0)
    ckpt = build_hf_model("hf:llama", vocab_size=VOCAB, seq_len=SEQ, checkpoint="torch").train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in find_blocks(ckpt))
    counts = count_calls(ckpt)
    for model in (plain, ckpt):
        set_layer_mask(find_blocks(model), mask([True, False, True, True], [1.0, 1.0, 2.0, 1.0]))
        loss = model(**batch()).loss
        forward_calls = dict(counts)
        loss.backward()
    # layer 2 was recomputed in backward (torch stops recomputing once it has what it needs)
    assert counts[1] == 0 and counts[2] > forward_calls[2] > 0
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert (a.grad is None) == (b.grad is None), n
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ labels and losses
def test_causal_loss_is_the_data_pipelines_next_token_loss():
    _, model = pair("gpt2")
    inputs = batch()  # labels = window[1:]: already shifted, as megaraptr.data makes them
    out = model(**causal_inputs(inputs))
    logits = out.logits.float().view(-1, VOCAB)
    expected = F.cross_entropy(logits, inputs["labels"].reshape(-1))
    assert torch.equal(out.loss, expected)
    # without shift_labels transformers would shift again and drop a label per row
    assert not torch.allclose(model(**inputs).loss, expected)


def test_mlm_loss_covers_the_masked_positions_only():
    _, model = pair("bert")
    inputs = batch()
    labels = torch.full_like(inputs["labels"], -100)
    labels[:, ::5] = inputs["labels"][:, ::5]
    out = model(input_ids=inputs["input_ids"], labels=labels)
    selected = labels != -100
    expected = F.cross_entropy(out.logits[selected].float(), labels[selected])
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ other models, errors
def test_other_models_are_found_through_no_split_modules():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    ref = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
                                           num_attention_heads=2, num_key_value_heads=1,
                                           intermediate_size=64)).train()
    model = adapt(copy.deepcopy(ref))
    assert [b.layer_id for b in find_blocks(model)] == [0, 1, 2]
    assert find_blocks(model)[0] is model.model.layers[0]
    assert torch.equal(model(**batch()).logits, ref(**batch()).logits)
    set_layer_mask(find_blocks(model), mask([True, False, True]))
    model(**batch())
    set_layer_mask(find_blocks(model), mask([True, True, True], [1.0, 2.0, 1.0]))
    with pytest.raises(ConfigError, match='raptr.scaling: .*"scaling": "none"'):
        model(**batch())


class TupleLayer(nn.Module):
    """A layer in the transformers 4.x style: returns (hidden, attention weights)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, hidden_states, attention_mask=None):
        return hidden_states + self.linear(hidden_states), None


class TupleModel(nn.Module):
    _no_split_modules = ["TupleLayer"]

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(TupleLayer() for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[0]
        return x


def test_tuple_outputs_are_kept_for_skipped_layers():
    model = adapt(TupleModel()).train()
    x = torch.randn(2, 4)
    set_layer_mask(find_blocks(model), mask([True, False, True]))
    layers = model.layers
    assert torch.equal(model(x), layers[2](layers[0](x)[0])[0])
    assert layers[1](x) == (x, None)
    fresh = adapt(TupleModel()).train()
    set_layer_mask(find_blocks(fresh), mask([False, True, True]))
    with pytest.raises(ConfigError, match="output format is unknown; keep layer 0 fixed"):
        fresh(x)


def test_a_model_without_a_layer_stack_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        adapt(nn.Sequential(nn.Linear(2, 2)))
    assert "expected one ModuleList" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="already adapted"):
        adapt(adapt(TupleModel()))


def test_config_path_and_sizes(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=3, n_embd=32, n_head=2, n_positions=64).save_pretrained(tmp_path)
    config = hf_config(f"hf:{tmp_path}", vocab_size=VOCAB, seq_len=SEQ)
    assert (config.model_type, config.num_hidden_layers, config.vocab_size) == ("gpt2", 3, VOCAB)
    assert hf_config(f"hf:{tmp_path / 'config.json'}", seq_len=SEQ).num_hidden_layers == 3
    with pytest.raises(ConfigError, match="--seq-len: 128 is above"):
        hf_config(f"hf:{tmp_path}", seq_len=128)
    with pytest.raises(ConfigError, match="--model: 'hf:/nonexistent': not hf:bert"):
        hf_config("hf:/nonexistent")
    llama = hf_config("hf:llama", size="mini", vocab_size=VOCAB, seq_len=SEQ)
    assert (llama.num_hidden_layers, llama.hidden_size, llama.num_key_value_heads) == (8, 256, 2)


# ------------------------------------------------------------------ 2 processes, ZeRO-2
