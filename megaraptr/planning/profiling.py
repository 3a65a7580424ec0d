"""The short profile behind the pipeline cost model (:class:`megaraptr.balance.Costs`).

:func:`measure_costs` times the forward and backward pass of one transformer block, of the
embeddings and of the final norm, head and loss, on one micro-batch of real tokens (median
of a few repetitions after a warm-up), and averages the numbers over all ranks with one
all-reduce, so that every rank of every pipeline stage plans the same partitions. The result
is saved with checkpoints: a resumed run plans from the same numbers.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from megaraptr.planning.balance import Costs


def _time(fn, repeats: int, device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure_costs(reference: torch.nn.Module, batch: dict, *, repeats: int = 3,
                  device=None, dtype: Optional[torch.dtype] = None) -> Costs:
    """Forward+backward milliseconds of one block, the embeddings and the head+loss, on one
    micro-batch, median of ``repeats``, averaged over all ranks (the same on every rank)."""
    device = torch.device(device or "cpu")
    model = reference
    input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype not in (None, torch.float32) \
        else torch.autocast(device.type, enabled=False)
    with torch.no_grad(), autocast:
        positions = torch.arange(input_ids.shape[1], device=device)
        hidden = (model.tok_emb(input_ids) + model.pos_emb(positions)).detach()

    def embed():
        with autocast:
            out = model.tok_emb(input_ids) + model.pos_emb(positions)
            if hasattr(model, "emb_ln"):
                out = model.emb_ln(out)
        out.float().sum().backward()

    def block():
        x = hidden.clone().requires_grad_(True)
        with autocast:
            out = model.blocks[0](x)
        out.float().sum().backward()

    def head():
        x = hidden.clone().requires_grad_(True)
        with autocast:
            if hasattr(model, "head"):
                selected = labels != -100
                logits = model.head(model.final_ln(x)[selected])
                loss = torch.nn.functional.cross_entropy(logits.float(), labels[selected])
            else:
                logits = torch.nn.functional.linear(model.final_ln(x), model.tok_emb.weight)
                loss = torch.nn.functional.cross_entropy(
                    logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()

    model.to(device).train()
    ms = torch.tensor([_time(f, repeats, device) * 1e3 for f in (block, embed, head)],
                      dtype=torch.float64, device=device)
    model.zero_grad(set_to_none=True)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(ms)
        ms /= torch.distributed.get_world_size()
    layer, embedding, head_ms = (round(float(v), 6) for v in ms.cpu())
    return Costs(layer=layer, embedding=embedding, head=head_ms)


