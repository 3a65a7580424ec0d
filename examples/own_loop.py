"""A byte-level GPT trained with RAPTR in your own DeepSpeed loop, on your own text.

    python own_loop.py [TEXT_FILE ...]
    torchrun --standalone --nproc_per_node 2 own_loop.py [TEXT_FILE ...]

Without files it trains on the built-in public-domain sample. TensorBoard: runs/own_loop.
"""
import gzip
import json
import sys

import torch
from torch import nn

import megaraptr
from megaraptr import mark_block, residual_scale, skippable
from megaraptr.data import SAMPLE_DIR  # the built-in public-domain sample


class Block(nn.Module):
    def __init__(self, layer_id, d=128, heads=4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        mark_block(self, layer_id)  # global layer id 0..L-1; nothing is renamed or wrapped

    @skippable  # skipped while training: returns x and runs nothing
    def forward(self, x, causal):
        s = residual_scale(self)  # 1, or 1/p with "scaling": "inverse_keep_prob"; 1 in eval
        h = self.ln1(x)
        x = x + s * self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + s * self.mlp(self.ln2(x))


class ByteGPT(nn.Module):
    def __init__(self, layers=6, d=128, seq=64):
        super().__init__()
        self.embed, self.pos = nn.Embedding(256, d), nn.Parameter(torch.zeros(seq, d))
        self.blocks = nn.ModuleList(Block(i, d) for i in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 256)

    def forward(self, tokens, labels):  # returns the loss: what train_step and evaluate need
        t = tokens.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu(1)
        x = self.embed(tokens) + self.pos[:t]
        for block in self.blocks:
            x = block(x, causal)
        logits = self.head(self.norm(x))
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())


def text(files):  # your text files, or the built-in sample's train split
    if files:
        return "".join(open(path, encoding="utf-8").read() for path in files)
    with gzip.open(SAMPLE_DIR / "train.jsonl.gz", "rt") as f:
        return "".join(json.loads(line)["text"] for line in f)


def rows(data, seq=64):  # bytes cut into rows of seq + 1 (inputs and next-token labels)
    data = torch.tensor(list(data.encode()))
    return data[: len(data) // (seq + 1) * (seq + 1)].view(-1, seq + 1)


def batch(rows, device):  # one micro-batch: the model's forward keyword arguments
    return {"tokens": rows[:, :-1].to(device), "labels": rows[:, 1:].to(device)}


torch.manual_seed(0)
steps, micro = 30, 8
config = {
    "train_micro_batch_size_per_gpu": micro,
    "gradient_accumulation_steps": 1,
    "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "torch_adam": True}},
    "tensorboard": {"enabled": True, "output_path": "runs", "job_name": "own_loop"},
    "raptr": {"enabled": True, "schedule": "3-4-6"},  # layers 0 and 5 fixed: p = 0.25, 0.5, 1
}
# no launcher: megaraptr.initialize starts a one-process group; under torchrun, DeepSpeed's
engine, optimizer, _, _ = megaraptr.initialize(model=ByteGPT(), config=config,
                                               total_steps=steps, seed=1)
all_rows = rows(text(sys.argv[1:]))
held_out = max(micro, len(all_rows) // 20)  # the last 5% of the rows, at least one batch
train, val = all_rows[:-held_out], all_rows[-held_out:]
rank, ranks = engine.data_parallel_rank, engine.data_parallel_size
val_batches = [batch(val[i:i + micro], engine.device)
               for i in range(rank * micro, len(val) - micro + 1, ranks * micro)]
monitor = megaraptr.StepMonitor(engine, tokens_per_step=micro * 64 * ranks)
monitor.eval(0, engine.evaluate(val_batches))
for step in range(engine.applied_steps + 1, steps + 1):
    start = ((step - 1) * ranks + rank) * micro % (len(train) - micro)  # each rank its own rows
    result = engine.train_step([batch(train[start:start + micro], engine.device)])
    loss = monitor.step(result)  # train/* and raptr/* scalars; the loss averaged over ranks
    if step % 10 == 0 and rank == 0:
        print(f"step {step} {result.stage.name}: layers {result.mask.active_ids}, loss {loss:.3f}")
final = engine.evaluate(val_batches)  # the full model, averaged over ranks
monitor.eval(steps, final)
print(f"rank {rank}: eval loss {final:.3f} (full model); layer FLOPs "
      f"{engine.layer_flops_fraction():.2f} of full training")
