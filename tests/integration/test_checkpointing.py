"""Activation checkpointing with skipping: gradients equal the non-checkpointed model.

The subnetwork and the residual scale are decided in ``Block.forward`` before the recomputed
region (``Block.layer``), so recomputation in backward replays the step's own subnetwork,
with the same dropout masks (both torch's and DeepSpeed's checkpointing restore the RNG).
"""
from __future__ import annotations

import os

import pytest
import torch

from megaraptr.core.block import set_layer_mask
from megaraptr.core.mask import LayerMask
from megaraptr.models import build_model

MASK = LayerMask((True, False, True, True), (1.0, 0.0, 2.0, 1.0))  # one skipped, one scaled


def gradients(name: str, checkpoint: str, mask: LayerMask):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=500, seq_len=32, dropout=0.1,
                        checkpoint=checkpoint)
    set_layer_mask(model.blocks, mask)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(5, 500, (2, 32), generator=g)
    y = x.clone() if name == "gpt" else torch.full_like(x, -100)
    if name == "bert":
        y[:, ::3] = x[:, ::3]
    torch.manual_seed(5)  # dropout
    loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["bert", "gpt"])
@pytest.mark.parametrize("checkpoint", ["torch", "deepspeed"])
def test_checkpointed_gradients_equal_the_plain_ones(name, checkpoint):
    if checkpoint == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    loss, grads = gradients(name, "none", MASK)
    loss_ck, grads_ck = gradients(name, checkpoint, MASK)
    assert loss_ck == loss
    for key, grad in grads.items():
        if key.startswith("blocks.1."):  # the skipped block: no gradient either way
            assert grad is None and grads_ck[key] is None, key
        else:
            assert torch.equal(grad, grads_ck[key]), key


def test_checkpointing_is_validated():
    with pytest.raises(ValueError, match="allowed: none, torch, deepspeed"):
        build_model("bert", "tiny", vocab_size=500, seq_len=32, checkpoint="sometimes")
