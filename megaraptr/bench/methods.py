"""The methods and ablations the quality benchmark compares, and the runs of a sweep.

Each method is a "raptr" block for a model of L layers and a run of N steps; everything else
in the run's DeepSpeed config (optimizer, LR schedule, batch) is shared, so the methods differ
only in which layers train on which step:

=================  ========================================================================
``full``           full-model training, N steps
``full-matched``   full-model training for as many steps as RAPTR's layer FLOPs buy
                   (N x RAPTR's expected fraction), with its own warmup + cosine schedule
``raptr``          RAPTR with megaraptr's defaults, schedule L/2-2L/3-5L/6-L ("6-8-10-12")
``pld``            Progressive Layer Dropping, the PLD paper's defaults
``layerdrop``      LayerDrop, p = 0.2
``stacking``       gradual stacking L/2-3L/4-L ("6-9-12")
=================  ========================================================================

The ablations (``--ablations``, at the longest horizon; or named in ``--methods``, at every
horizon) change one thing of ``raptr`` each.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List

from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.models import SIZES


def raptr_depths(num_layers: int) -> List[int]:
    """L/2, 2L/3, 5L/6, L rounded: 6-8-10-12 for 12 layers."""
    return [max(1, round(num_layers * f)) for f in (1 / 2, 2 / 3, 5 / 6)] + [num_layers]


def stacking_depths(num_layers: int) -> List[int]:
    """L/2, 3L/4, L rounded: 6-9-12 for 12 layers."""
    return [max(1, round(num_layers * f)) for f in (1 / 2, 3 / 4)] + [num_layers]


def _dashed(depths: List[int]) -> str:
    return "-".join(str(d) for d in depths)


def lr_curve(steps: int, warmup_fraction: float, cos_min_ratio: float) -> List[float]:
    """DeepSpeed WarmupCosineLR's multiplier at steps 1..N (linear warmup, cosine decay)."""
    warmup = max(1, round(warmup_fraction * steps))
    out = []
    for s in range(1, steps + 1):
        if s <= warmup:
            out.append(s / warmup)
        else:
            ratio = (s - warmup) / max(1, steps - warmup)
            out.append(cos_min_ratio + (1 - cos_min_ratio) * 0.5 * (1 + math.cos(math.pi * ratio)))
    return out


def lr_tied_fractions(steps: int, stages: int, warmup_fraction: float,
                      cos_min_ratio: float) -> List[float]:
    """Stage lengths (fractions of the run) that give every stage the same sum of LR."""
    curve = lr_curve(steps, warmup_fraction, cos_min_ratio)
    total, cum, bounds, target = sum(curve), 0.0, [0], 1
    for s, lr in enumerate(curve, start=1):
        cum += lr
        if target < stages and cum >= total * target / stages:
            bounds.append(s)
            target += 1
    bounds.append(steps)
    return [(b - a) / steps for a, b in zip(bounds, bounds[1:])]


def _raptr(L: int, N: int, **changes) -> dict:
    return dict({"enabled": True, "method": "raptr", "schedule": _dashed(raptr_depths(L))},
                **changes)


BASELINE = "full"
"""The run every other run of a horizon is compared with (full-model training, equal steps)."""
METHODS: Dict[str, Callable[[int, int], dict]] = {
    BASELINE: lambda L, N: {"enabled": False},
    "full-matched": lambda L, N: {"enabled": False},
    "raptr": lambda L, N: _raptr(L, N),
    "pld": lambda L, N: {"enabled": True, "method": "pld"},
    "layerdrop": lambda L, N: {"enabled": True, "method": "layerdrop"},
    "stacking": lambda L, N: {"enabled": True, "method": "stacking",
                              "schedule": _dashed(stacking_depths(L))},
}


def _staged(L: int, fractions: List[float]) -> List[dict]:
    return [{"layers": d, "fraction": f} for d, f in zip(raptr_depths(L), fractions)]


ABLATIONS: Dict[str, Callable[[int, int, "object"], dict]] = {
    "raptr-long-full-stage": lambda L, N, a: _raptr(L, N, schedule=_staged(L, [.2, .2, .2, .4])),
    # the longest full-model stage that keeps 6-8-10-12 at 0.78 of the layer FLOPs
    "raptr-full-stage-34": lambda L, N, a: _raptr(L, N, schedule=_staged(L, [.22, .22, .22, .34])),
    "raptr-lr-tied-stages": lambda L, N, a: _raptr(L, N, schedule=_staged(
        L, lr_tied_fractions(N, 4, a.warmup, COS_MIN_RATIO))),
    "raptr-full-warmup": lambda L, N, a: _raptr(L, N, full_model_warmup_steps=round(0.2 * N)),
    "raptr-stage-lr-rewarm": lambda L, N, a: _raptr(L, N,
                                                    stage_lr_rewarm_steps=max(1, round(0.02 * N))),
    "raptr-scaled": lambda L, N, a: _raptr(L, N, scaling="inverse_keep_prob"),
    "raptr-momentum": lambda L, N, a: _raptr(L, N, skipped_layers="momentum"),
    "raptr-exact": lambda L, N, a: _raptr(L, N, sampling="exact"),
    "raptr-no-fixed": lambda L, N, a: _raptr(L, N, fixed_layers=[]),
}
COS_MIN_RATIO = 0.1


@dataclass
class Run:
    """One training of the sweep, in its own folder."""

    horizon: float
    name: str
    steps: int
    eval_interval: int
    save_interval: int
    folder: str
    config: dict

    @property
    def label(self) -> str:
        return f"h{self.horizon:g}/{self.name}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.folder, "ds_config.json")

    @property
    def summary_path(self) -> str:
        return os.path.join(self.folder, "summary.json")

    @property
    def log_path(self) -> str:
        return os.path.join(self.folder, "log.txt")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.folder, "checkpoints")

    def summary(self) -> dict:
        with open(self.summary_path) as f:
            return json.load(f)

    def finished(self) -> bool:
        try:
            return bool(self.summary().get("finished"))
        except (OSError, ValueError):
            return False


def ds_config(args, steps: int, raptr: dict, job_name: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "steps_per_print": 10 ** 9,
        "optimizer": {"type": "AdamW", "params": {
            "lr": args.lr, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01,
            "torch_adam": True}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": steps, "warmup_num_steps": max(1, round(args.warmup * steps)),
            "warmup_min_ratio": 0.0, "cos_min_ratio": COS_MIN_RATIO}},
        "zero_optimization": {"stage": 0},
        "tensorboard": {"enabled": True, "output_path": os.path.join(args.out, "tensorboard"),
                        "job_name": job_name},
        "raptr": raptr,
    }


def model_shape(args) -> tuple[int, int]:
    """(layers, non-embedding parameters) of the benchmark model."""

    s = SIZES[args.size]
    h, f = s["hidden"], s["ffn"]
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # qkv+proj, fc1+fc2, two LNs
    return s["num_layers"], s["num_layers"] * per_layer


def plan_runs(args, data_path: str) -> List[Run]:
    """Every run of the sweep, its folder created and its ds_config written."""
    L, params = model_shape(args)
    tokens_per_step = args.micro_batch * args.seq_len
    horizons = [None] if args.steps else sorted(args.horizons)
    runs = []
    for h in horizons:
        steps = args.steps or max(8, round(h * params / tokens_per_step))
        h = h if h is not None else steps * tokens_per_step / params
        names = {m: METHODS[m] for m in args.methods if m in METHODS}
        names.update({a: (lambda fn: lambda L_, N_: fn(L_, N_, args))(ABLATIONS[a])
                      for a in args.methods if a in ABLATIONS})
        if args.ablations and h == max(horizons if args.steps is None else [h]):
            names.update({a: (lambda fn: lambda L_, N_: fn(L_, N_, args))(fn)
                          for a, fn in ABLATIONS.items()})
        evals = max(1, steps // args.evals)
        for name, block_of in names.items():
            n = steps
            if name == "full-matched":
                raptr = parse_raptr_block(METHODS["raptr"](L, steps))
                n = max(1, round(steps * build_schedule(raptr, num_layers=L, total_steps=steps)
                                 .expected_flops_fraction()))
            folder = os.path.join(args.out, f"h{h:g}", name)
            os.makedirs(folder, exist_ok=True)
            config = ds_config(args, n, block_of(L, n), f"h{h:g}-{name}")
            with open(os.path.join(folder, "ds_config.json"), "w") as f:
                json.dump(config, f, indent=2)
            runs.append(Run(h, name, n, evals, max(1, n // args.checkpoints), folder, config))
    return runs
