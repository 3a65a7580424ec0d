"""Training FLOPs from the model shape (megaraptr.planning.flops) against a direct count of the
same step by torch's FlopCounterMode (math attention), for BERT and GPT, full and skipped."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from megaraptr.core.block import set_layer_mask
from megaraptr.core.mask import LayerMask
from megaraptr.data.masking import Masker
from megaraptr.models import SIZES, build_model
from megaraptr.planning.flops import step_flops

VOCAB, T, B = 512, 32, 3


def counted(model, ids, labels) -> int:
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(ids, labels).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name,kind", [("gpt", "causal"), ("bert", "mlm")])
@pytest.mark.parametrize("active", [(1, 1, 1, 1), (1, 0, 1, 0), (0, 0, 0, 1)])
def test_formula_equals_a_direct_count(name, kind, active):
    torch.manual_seed(0)
    model = build_model(name, "tiny", vocab_size=VOCAB, seq_len=T)
    ids = torch.randint(5, VOCAB, (B, T))
    if kind == "mlm":  # the real masker: [CLS] body [SEP], round(0.15 * 30) = 4 per sequence
        ids[:, 0], ids[:, -1] = 2, 3
        rows = [Masker(VOCAB, 4, (0, 1, 2, 3, 4))(r.numpy(), [0, i]) for i, r in enumerate(ids)]
        ids = torch.from_numpy(np.stack([r[0] for r in rows]))
        labels = torch.from_numpy(np.stack([r[1] for r in rows]))
    else:
        labels = torch.roll(ids, -1, 1)
    set_layer_mask(model.blocks, LayerMask(tuple(map(bool, active)), tuple(map(float, active))))
    flops = step_flops(kind, SIZES["tiny"], vocab_size=VOCAB, seq_len=T, sequences=B)
    expected = flops.run(1, sum(active) / len(active))
    assert counted(model, ids, labels) == expected


def test_head_makes_total_fraction_exceed_layer_fraction():
    narrow = step_flops("causal", SIZES["narrow"], vocab_size=2048, seq_len=128, sequences=16)
    assert narrow.total_fraction(1.0) == 1.0
    assert narrow.total_fraction(0.75) == pytest.approx(0.7926, abs=1e-4)
    assert narrow.run(10, 1.0) == 10 * narrow.full
    bert = step_flops("mlm", SIZES["narrow"], vocab_size=2048, seq_len=128, sequences=16)
    assert 0.75 < bert.total_fraction(0.75) < narrow.total_fraction(0.75)  # masked head only
