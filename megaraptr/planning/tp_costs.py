"""Per-micro-batch costs of a transformer under tensor parallelism, from its shape.

The pipeline cost model (:class:`megaraptr.planning.balance.Costs`) prices one active layer,
the embedding and the head. Under tensor parallelism T a layer's matrix work is split over T
GPUs and each active layer adds four all-reduces of its activation per micro-batch (two
forward, two backward: :mod:`megaraptr.runtime.tp`), which a skipped layer does not run::

    layer(T) = layer_compute / T + 4 * all_reduce(T)

:func:`with_tensor_parallel` applies that to measured costs (an all-reduce cost given in the
same unit); :func:`shape_costs` derives every number in milliseconds from a model shape and a
few hardware figures (:class:`Hardware`), so ``megaraptr.simulate`` can plan T x P x D for a
7B- or 13B-shaped model before any GPU is held:

- FLOPs per token and layer, forward: ``2 (4 h^2 + m h f) + 4 s h`` (q, k, v and output
  projections; m = 3 FFN matrices when gated (SwiGLU, Llama) else 2; attention scores and
  values over s positions); forward + backward = 3x; time = FLOPs / T / achieved FLOP/s;
- ring all-reduce of ``b s h`` bf16 values over T GPUs: ``2 (T - 1) / T * bytes / bandwidth
  + latency``;
- the output head ``2 h V`` per token, x3: megaraptr replicates it on every tensor rank, so it
  is not divided by T; the embedding lookup is taken as free;
- one pipeline hop: ``b s h`` bf16 values over the inter-node link (every tensor rank sends
  its whole activation over its own NIC, in parallel).

The default :class:`Hardware` is an H200 node: 470 TFLOP/s achieved (what the GPT-1.3B layer
measured on one H200 in docs/reference-costs.md gives under this FLOP count: 5.70 ms for
8 x 1024 tokens), 360 GB/s NVLink all-reduce bus bandwidth, 10 us per all-reduce, 50 GB/s
(400 Gb/s InfiniBand) per GPU between nodes. The last three are assumptions, not measured
here: give your cluster's numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from megaraptr.errors import ConfigError
from megaraptr.planning.balance import Costs

ALL_REDUCES_PER_LAYER = 4
"""Tensor-parallel all-reduces of one active layer per micro-batch (2 forward, 2 backward)."""
BF16_BYTES = 2


@dataclass(frozen=True)
class Shape:
    """A decoder's shape and one micro-batch."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    seq_len: int = 2048
    vocab: int = 32000
    micro_batch: int = 1
    gated: bool = True
    """Three FFN matrices (SwiGLU, as Llama) instead of two."""

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class Hardware:
    """Per-GPU throughput and links (defaults: an H200 node; see the module doc)."""

    tflops: float = 470.0
    """Achieved dense bf16 TFLOP/s of a transformer layer's matrix work."""
    tp_gbps: float = 360.0
    """All-reduce bus bandwidth inside a node (GB/s)."""
    tp_latency_us: float = 10.0
    """Fixed cost of one all-reduce (microseconds)."""
    p2p_gbps: float = 50.0
    """Point-to-point bandwidth between nodes, per GPU (GB/s)."""


def parse_shape(text: str, **kwargs) -> Shape:
    """``"LxHxAxF"`` (layers x hidden x heads x FFN width), e.g. ``"32x4096x32x11008"``."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError("--model-shape", f"{text!r}; allowed: LAYERSxHIDDENxHEADSxFFN with "
                          "whole numbers above 0, e.g. 32x4096x32x11008")
    layers, hidden, heads, ffn = map(int, parts)
    if hidden % heads:
        raise ConfigError("--model-shape", f"hidden {hidden} is not divisible by {heads} heads")
    return Shape(layers, hidden, heads, ffn, **kwargs)


def layer_flops(shape: Shape) -> float:
    """Forward + backward FLOPs of one layer on one micro-batch."""
    h, f = shape.hidden, shape.ffn
    per_token = 2 * (4 * h * h + (3 if shape.gated else 2) * h * f) + 4 * shape.seq_len * h
    return 3.0 * per_token * shape.tokens


def head_flops(shape: Shape) -> float:
    """Forward + backward FLOPs of the output head (logits) on one micro-batch."""
    return 3.0 * 2 * shape.hidden * shape.vocab * shape.tokens


def all_reduce_ms(num_bytes: float, tensor: int, hw: Hardware) -> float:
    """One ring all-reduce of ``num_bytes`` over ``tensor`` GPUs, in ms (0 for one GPU)."""
    if tensor == 1:
        return 0.0
    return 2 * (tensor - 1) / tensor * num_bytes / (hw.tp_gbps * 1e9) * 1e3 + \
        hw.tp_latency_us / 1e3


def with_tensor_parallel(costs: Costs, tensor: int, all_reduce: float) -> Costs:
    """Measured one-GPU ``costs`` under tensor parallelism ``tensor``: each layer's compute
    divided by T plus ``all_reduce`` (the per-layer, per-micro-batch all-reduce time, all four
    together, in the costs' unit); embedding and head replicated, unchanged."""
    if tensor == 1:
        return costs
    return Costs(layer=costs.layer / tensor + all_reduce, embedding=costs.embedding,
                 head=costs.head)


@dataclass(frozen=True)
class ShapeCosts:
    """What :func:`shape_costs` derives, in ms per micro-batch."""

    layer_compute: float
    """One layer's fwd+bwd on one GPU (T = 1)."""
    all_reduce: float
    """The four all-reduces of one active layer under T."""
    head: float
    p2p: float
    tensor: int

    @property
    def costs(self) -> Costs:
        return with_tensor_parallel(Costs(self.layer_compute, 0.0, self.head), self.tensor,
                                    self.all_reduce)

    def to_dict(self) -> dict:
        return dict(asdict(self), layer=self.costs.layer)


def shape_costs(shape: Shape, tensor: int, hw: Hardware = Hardware()) -> ShapeCosts:
    """Costs of ``shape`` with each layer split over ``tensor`` GPUs (see the module doc)."""
    if shape.heads % tensor or shape.ffn % tensor:
        raise ConfigError("--tensor-parallel", f"{tensor}: {shape.heads} heads and FFN "
                          f"{shape.ffn} must both divide by it")
    per_second = hw.tflops * 1e12
    activation = shape.tokens * shape.hidden * BF16_BYTES
    return ShapeCosts(layer_compute=layer_flops(shape) / per_second * 1e3,
                      all_reduce=ALL_REDUCES_PER_LAYER * all_reduce_ms(activation, tensor, hw),
                      head=head_flops(shape) / per_second * 1e3,
                      p2p=activation / (hw.p2p_gbps * 1e9) * 1e3, tensor=tensor)
