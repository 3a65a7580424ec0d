"""Tests of megaraptr.models: the reference BERT and GPT under the RAPTR layer contract.

Tiny sizes on CPU (4 layers x 128, vocab 500, 32 tokens), fixed seeds. No DeepSpeed, no
process group. The op-counting tests use a TorchDispatchMode, which sees every aten kernel
of the forward and of the backward.
"""
import itertools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from megaraptr.core.block import find_blocks, set_layer_mask
from megaraptr.core.mask import LayerMask
from megaraptr.models import (DATA_KIND, GPTLM, MODELS, SIZES, BertMLM, Block, build_model,
                              model_config, num_layers)

VOCAB, SEQ, BATCH = 500, 32, 2
NAMES = ["bert", "gpt"]


def _model(name):
    torch.manual_seed(1234)
    return build_model(name, "tiny", vocab_size=VOCAB, seq_len=SEQ).train()


def _batch(name, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    if name == "bert":
        labels = torch.full_like(ids, -100)
        picked = torch.rand(BATCH, SEQ, generator=gen) < 0.25
        picked[0, 0] = True
        labels[picked] = ids[picked]
    else:
        labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    return ids, labels


def _mask(active, scale=1.0):
    return LayerMask(tuple(bool(a) for a in active),
                     tuple((scale if a else 0.0) for a in active))


def _loss_and_grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- sizes


def test_sizes_and_depths_without_building():
    assert {s: num_layers(s) for s in ("tiny", "mini", "base", "medium")} == {
        "tiny": 4, "mini": 8, "base": 12, "medium": 24}
    assert SIZES["base"]["hidden"] == 768 and SIZES["base"]["heads"] == 12
    assert SIZES["base"]["ffn"] == 3072
    assert SIZES["medium"]["hidden"] == 1024 and SIZES["medium"]["heads"] == 16
    assert SIZES["medium"]["ffn"] == 4096
    for size in SIZES:
        assert SIZES[size]["hidden"] % SIZES[size]["heads"] == 0
    cfg = model_config("medium", vocab_size=VOCAB, seq_len=SEQ)
    assert (cfg.num_layers, cfg.hidden, cfg.vocab_size, cfg.max_seq_len) == (24, 1024, VOCAB, SEQ)
    assert MODELS == {"bert": BertMLM, "gpt": GPTLM}
    assert DATA_KIND == {"bert": "mlm", "gpt": "causal"}


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_blocks(name):
    model = _model(name)
    blocks = find_blocks(model)
    assert len(blocks) == 4 == model.cfg.num_layers
    assert blocks == list(model.blocks)
    assert all(isinstance(b, Block) for b in blocks)
    assert model.kind == DATA_KIND[name]
    assert model.blocks[0].attn.causal is (name == "gpt")


def test_heads_must_divide_hidden():
    cfg = model_config("tiny", vocab_size=VOCAB, seq_len=SEQ)
    with pytest.raises(ValueError, match="not divisible"):
        Block(type(cfg)(**dict(cfg.__dict__, heads=3)), 0, causal=False)


# ---------------------------------------------------------------- a full mask is the model


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_do_not_depend_on_the_mask(name):
    model = _model(name)
    keys = list(model.state_dict())
    assert not [k for k in keys if "raptr" in k or "layer_id" in k]
    ids, labels = _batch(name)
    for mask in (_mask([1, 0, 0, 1]), _mask([0, 0, 0, 0]), _mask([1, 1, 1, 1], 2.0), None):
        set_layer_mask(find_blocks(model), mask)
        model(ids, labels).backward()
        assert list(model.state_dict()) == keys
    # A state_dict saved under a mask loads strictly into a fresh model.
    fresh = build_model(name, "tiny", vocab_size=VOCAB, seq_len=SEQ)
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("name", NAMES)
def test_full_mask_is_exactly_the_unmodified_model(name):
    ids, labels = _batch(name)
    reference = _model(name)
    ref_loss, ref_grads = _loss_and_grads(reference, ids, labels)
    model = _model(name)
    blocks = find_blocks(model)
    set_layer_mask(blocks, _mask([1, 0, 1, 0], 2.5))  # something else first
    partial_loss, _ = _loss_and_grads(model, ids, labels)
    assert not torch.equal(partial_loss, ref_loss)
    for full in (LayerMask.full(4), None):
        set_layer_mask(blocks, full)
        loss, grads = _loss_and_grads(model, ids, labels)
        assert torch.equal(loss, ref_loss)
        assert grads.keys() == ref_grads.keys()
        for key, grad in grads.items():
            assert grad is not None and torch.equal(grad, ref_grads[key]), key


# ---------------------------------------------------------------- skipped blocks cost nothing


@pytest.mark.parametrize("name", NAMES)
def test_aten_ops_are_linear_in_the_number_of_active_blocks(name):
    model = _model(name)
    blocks = find_blocks(model)
    ids, labels = _batch(name)
    counts = {}
    for k in range(5):
        for subset in itertools.combinations(range(4), k):
            set_layer_mask(blocks, _mask([i in subset for i in range(4)]))
            model.zero_grad(set_to_none=True)
            with _CountOps() as mode:
                model(ids, labels).backward()
            counts[subset] = mode.ops
    base = counts[()]
    per_block = counts[(0,)] - base
    assert sum(per_block.values()) > 0 and sum(base.values()) > 0
    # The per-block work includes its backward (matmul gradients of 4 linear layers).
    assert per_block["aten.mm.default"] >= 8
    for subset, ops in counts.items():
        expected = Counter(base)
        for _ in subset:
            expected.update(per_block)
        assert ops == expected, (subset, ops - expected, expected - ops)
        assert sum(ops.values()) == sum(base.values()) + len(subset) * sum(per_block.values())


@pytest.mark.parametrize("name", NAMES)
def test_skipped_block_runs_no_submodule_and_gets_no_gradient(name):
    model = _model(name)
    skipped = {1, 2}
    fired = Counter()
    for block in model.blocks:
        for sub_name in ("attn", "mlp", "ln1", "ln2", "attn.qkv", "attn.proj", "mlp.fc1",
                         "mlp.fc2", "drop"):
            module = block.get_submodule(sub_name)
            module.register_forward_hook(
                lambda m, i, o, key=(block.layer_id, sub_name): fired.update([key]))
    set_layer_mask(find_blocks(model), _mask([i not in skipped for i in range(4)]))
    ids, labels = _batch(name)
    model(ids, labels).backward()
    for layer_id in range(4):
        for key in [k for k in fired if k[0] == layer_id]:
            assert layer_id not in skipped, key
        if layer_id not in skipped:
            assert fired[(layer_id, "attn")] == fired[(layer_id, "mlp")] == 1
            assert fired[(layer_id, "ln1")] == fired[(layer_id, "ln2")] == 1
    for layer_id, block in enumerate(model.blocks):
        for pname, param in block.named_parameters():
            if layer_id in skipped:
                assert param.grad is None, (layer_id, pname)
            else:
                assert param.grad is not None and param.grad.abs().sum() > 0, (layer_id, pname)
    # Everything outside the blocks still trains.
    outside = [p for n, p in model.named_parameters() if not n.startswith("blocks.")]
    assert outside and all(p.grad is not None for p in outside)


@pytest.mark.parametrize("name", NAMES)
def test_skipped_blocks_are_the_identity_on_the_residual_stream(name):
    # Skipping blocks 1 and 2 gives the same model as a 2-block model made of blocks 0 and 3.
    model = _model(name)
    ids, _ = _batch(name)
    set_layer_mask(find_blocks(model), _mask([1, 0, 0, 1]))
    skipped_out = model(ids)
    short = _model(name)
    short.load_state_dict(model.state_dict())
    short.blocks = torch.nn.ModuleList([short.blocks[0], short.blocks[3]])
    assert torch.equal(short(ids), skipped_out)


# ---------------------------------------------------------------- scaling and eval


def test_inverse_scaling_of_one_block_matches_a_manual_computation():
    torch.manual_seed(5)
    cfg = model_config("tiny", vocab_size=VOCAB, seq_len=SEQ)
    for causal in (False, True):
        block = Block(cfg, 0, causal=causal).train()
        x = torch.randn(BATCH, SEQ, cfg.hidden)
        s = 1 / 0.4
        set_layer_mask([block], LayerMask((True,), (s,)))
        out = block(x)
        with torch.no_grad():
            h = x + s * block.attn(block.ln1(x))
            manual = h + s * block.mlp(block.ln2(h))
            unscaled_h = x + block.attn(block.ln1(x))
            unscaled = unscaled_h + block.mlp(block.ln2(unscaled_h))
        torch.testing.assert_close(out, manual, rtol=0, atol=1e-6)
        assert not torch.allclose(out, unscaled, atol=1e-4)
        set_layer_mask([block], None)
        torch.testing.assert_close(block(x), unscaled, rtol=0, atol=1e-6)
        block.eval()  # eval ignores the scale
        set_layer_mask([block], LayerMask((True,), (s,)))
        torch.testing.assert_close(block(x), unscaled, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_ignores_the_mask(name):
    model = _model(name)
    ids, labels = _batch(name)
    with torch.no_grad():
        full_train = model(ids)
        model.eval()
        full_eval = model(ids)
        assert torch.equal(full_eval, full_train)  # dropout 0: train and eval agree
        eval_loss = model(ids, labels)
        for mask in (_mask([1, 0, 0, 1]), _mask([0, 0, 0, 0]), _mask([1, 1, 1, 1], 2.5)):
            set_layer_mask(find_blocks(model), mask)
            assert torch.equal(model.eval()(ids), full_eval)
            assert torch.equal(model(ids, labels), eval_loss)
            # ... while in training mode the same mask does change the model.
            assert not torch.equal(model.train()(ids, labels), eval_loss)


# ---------------------------------------------------------------- heads and attention


def test_bert_mlm_loss_is_cross_entropy_at_the_masked_positions():
    model = _model("bert")
    ids, labels = _batch("bert")
    selected = labels != -100
    assert 0 < selected.sum() < selected.numel()
    rows = []
    hook = model.head_dense.register_forward_hook(lambda m, i, o: rows.append(i[0].shape))
    loss = model(ids, labels)
    hook.remove()
    assert rows == [(int(selected.sum()), model.cfg.hidden)]  # the head ran on masked rows only
    logits = model(ids)
    assert logits.shape == (BATCH, SEQ, VOCAB)
    reference = F.cross_entropy(logits[selected], labels[selected])
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    # The head sees only the masked rows: a sum over all positions would differ.
    assert not torch.allclose(loss, F.cross_entropy(logits.view(-1, VOCAB), ids.view(-1)))


def test_bert_padding_mask_hides_padded_keys():
    model = _model("bert").eval()
    ids, _ = _batch("bert")
    attention_mask = torch.ones_like(ids)
    attention_mask[:, 24:] = 0
    other = ids.clone()
    other[:, 24:] = (other[:, 24:] + 7) % VOCAB
    with torch.no_grad():
        a = model(ids, attention_mask=attention_mask)
        b = model(other, attention_mask=attention_mask)
        c = model(other)
    torch.testing.assert_close(a[:, :24], b[:, :24], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, :24], c[:, :24], atol=1e-4)  # unmasked, padding would leak


def test_gpt_is_causal():
    model = _model("gpt").eval()
    ids, _ = _batch("gpt")
    with torch.no_grad():
        before = model(ids)
        for t in (5, 20, SEQ - 1):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % VOCAB
            after = model(changed)
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(after[:, t], before[:, t], atol=1e-4)


def test_gpt_loss_is_next_token_cross_entropy():
    model = _model("gpt")
    ids, labels = _batch("gpt")
    loss = model(ids, labels)
    logits = model(ids)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)),
                               rtol=1e-6, atol=1e-6)


def test_gpt_rejects_an_attention_mask():
    model = _model("gpt")
    ids, _ = _batch("gpt")
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones_like(ids))


@pytest.mark.parametrize("name", NAMES)
def test_embeddings_are_tied(name):
    model = _model(name)
    ids, labels = _batch(name)
    model(ids, labels).backward()
    # The decoder is the embedding matrix: tokens never seen as input still get gradient.
    unseen = sorted(set(range(VOCAB)) - set(ids.view(-1).tolist()))[:5]
    assert model.tok_emb.weight.grad[unseen].abs().sum() > 0
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "decoder" in n or "lm_head" in n]
