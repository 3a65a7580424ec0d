"""The methods and ablations the quality benchmark compares, and the runs of a sweep.

Each method is a "raptr" block for a model of L layers and a run of N steps; everything else
in the run's DeepSpeed config (optimizer, batch, a warmup + cosine LR schedule over the run's
own length) is shared, so the methods differ only in which layers train on which step:

=================  ========================================================================
``full``           full-model training, N steps (the equal-steps baseline)
``full-matched``   full-model training for as many steps as RAPTR's total FLOPs buy (N x
                   RAPTR's expected total-FLOPs fraction: layers, embedding and head, see
                   :mod:`megaraptr.planning.flops`), its own schedule over those steps
``full-wall``      full-model training for as many steps as RAPTR's measured wall-clock buys:
                   N x (raptr's training seconds / full's), both measured in this sweep;
                   planned once those two runs have finished
``raptr``          RAPTR with megaraptr's defaults, schedule L/2-2L/3-5L/6-L ("6-8-10-12")
``pld``            Progressive Layer Dropping, theta_bar solved for RAPTR's layer FLOPs
                   (``"pld": {"match_flops": f}``), the recipe-tied gamma
``layerdrop``      LayerDrop, drop probability solved for RAPTR's layer FLOPs
``stacking``       gradual stacking L/2-3L/4-L ("6-9-12"): the same layer FLOPs as RAPTR
=================  ========================================================================

So ``full-matched``, ``raptr``, ``pld``, ``layerdrop`` and ``stacking`` each finish their own
annealed schedule at about the same total FLOPs, and ``full-wall`` at RAPTR's wall-clock.
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
from megaraptr.models import DATA_KIND, SIZES
from megaraptr.planning.flops import StepFlops, step_flops


def raptr_depths(num_layers: int) -> List[int]:
    """L/2, 2L/3, 5L/6, L rounded: 6-8-10-12 for 12 layers."""
    return [max(1, round(num_layers * f)) for f in (1 / 2, 2 / 3, 5 / 6)] + [num_layers]


def stacking_depths(num_layers: int) -> List[int]:
    """L/2, 3L/4, L rounded: 6-9-12 for 12 layers."""
    return [max(1, round(num_layers * f)) for f in (1 / 2, 3 / 4)] + [num_layers]


def late_full_depths(num_layers: int) -> List[int]:
    """L/2, 7L/12, 2L/3, L: 6-7-8-12 for 12 layers (mean 9 over stages of .2/.2/.2/.4)."""
    return [max(1, round(num_layers * f)) for f in (1 / 2, 7 / 12, 2 / 3)] + [num_layers]


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


def raptr_layer_fraction(L: int, N: int) -> float:
    """The expected layer-FLOPs fraction of ``raptr`` (the target the baselines match)."""
    return build_schedule(parse_raptr_block(_raptr(L, N)), num_layers=L,
                          total_steps=N).expected_flops_fraction()


BASELINE = "full"
"""The run every other run of a horizon is compared with (full-model training, equal steps)."""
MATCHED, WALL = "full-matched", "full-wall"
METHODS: Dict[str, Callable[[int, int], dict]] = {
    BASELINE: lambda L, N: {"enabled": False},
    MATCHED: lambda L, N: {"enabled": False},
    WALL: lambda L, N: {"enabled": False},
    "raptr": lambda L, N: _raptr(L, N),
    "pld": lambda L, N: {"enabled": True, "method": "pld",
                         "pld": {"match_flops": round(raptr_layer_fraction(L, N), 4)}},
    "layerdrop": lambda L, N: {"enabled": True, "method": "layerdrop",
                               "layerdrop": {"match_flops": round(raptr_layer_fraction(L, N), 4)}},
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
    "raptr-sqrt-scaled": lambda L, N, a: _raptr(L, N, scaling="inverse_sqrt_keep_prob"),
    # a stacking-style first stage: exactly the bottom L/2 - 1 layers and the last one run, as
    # the fixed layers of every stage (the top half is sampled from stage 2 on)
    "raptr-fixed-half": lambda L, N, a: _raptr(L, N, fixed_layers="first_stage"),
    # 40% of the run on the full model at RAPTR's layer FLOPs (6-7-8-12 at .2/.2/.2/.4)
    "raptr-late-full-stage": lambda L, N, a: _raptr(L, N, schedule=[
        {"layers": d, "fraction": f} for d, f in zip(late_full_depths(L), (.2, .2, .2, .4))]),
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
    config = {
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
        # bf16: ZeRO-1, since DeepSpeed's ZeRO-0 bf16 wrapper updates every parameter each step
        "zero_optimization": {"stage": 1 if args.precision == "bf16" else 0},
        "tensorboard": {"enabled": True, "output_path": os.path.join(args.out, "tensorboard"),
                        "job_name": job_name},
        "raptr": dict(raptr, kernels=args.kernels) if args.kernels != "eager" else raptr,
    }
    if args.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def model_shape(args) -> tuple[int, int]:
    """(layers, non-embedding parameters) of the benchmark model."""

    s = SIZES[args.size]
    h, f = s["hidden"], s["ffn"]
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # qkv+proj, fc1+fc2, two LNs
    return s["num_layers"], s["num_layers"] * per_layer


def flops_of(args) -> StepFlops:
    """FLOPs of one step of the benchmark model (its data's vocabulary, its batch)."""
    return step_flops(DATA_KIND[args.model], SIZES[args.size], vocab_size=args.vocab_size,
                      seq_len=args.seq_len, sequences=args.micro_batch)


def _write_run(args, h: float, name: str, n: int, evals: int, raptr: dict) -> Run:
    folder = os.path.join(args.out, f"h{h:g}", name)
    os.makedirs(folder, exist_ok=True)
    config = ds_config(args, n, raptr, f"h{h:g}-{name}")
    with open(os.path.join(folder, "ds_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return Run(h, name, n, evals, max(1, n // args.checkpoints), folder, config)


def plan_runs(args, data_path: str) -> List[Run]:
    """Every run of the sweep but ``full-wall`` (see :func:`plan_wall_runs`), its folder
    created and its ds_config written."""
    L, params = model_shape(args)
    tokens_per_step = args.micro_batch * args.seq_len
    horizons = [None] if args.steps else sorted(args.horizons)
    runs = []
    for h in horizons:
        steps = args.steps or max(8, round(h * params / tokens_per_step))
        h = h if h is not None else steps * tokens_per_step / params
        names = {m: METHODS[m] for m in args.methods if m in METHODS and m != WALL}
        names.update({a: (lambda fn: lambda L_, N_: fn(L_, N_, args))(ABLATIONS[a])
                      for a in args.methods if a in ABLATIONS})
        if args.ablations and h == max(horizons if args.steps is None else [h]):
            names.update({a: (lambda fn: lambda L_, N_: fn(L_, N_, args))(fn)
                          for a, fn in ABLATIONS.items()})
        evals = max(1, steps // args.evals)
        for name, block_of in names.items():
            n = steps
            if name == MATCHED:  # total FLOPs (head and embedding included) of raptr
                fraction = flops_of(args).total_fraction(raptr_layer_fraction(L, steps))
                n = max(1, round(steps * fraction))
            runs.append(_write_run(args, h, name, n, evals, block_of(L, steps)))
    return runs


def plan_wall_runs(args, runs: List[Run]) -> List[Run]:
    """The ``full-wall`` run of each horizon whose ``full`` and ``raptr`` runs have finished:
    N x (raptr's training seconds / full's), the ratio kept in its folder's ``wall.json`` (so a
    resumed sweep trains the same run)."""
    if WALL not in args.methods:
        return []
    out = []
    for h in sorted({r.horizon for r in runs}):
        by = {r.name: r for r in runs if r.horizon == h}
        full, raptr = by.get(BASELINE), by.get("raptr")
        if full is None or raptr is None:
            continue
        path = os.path.join(args.out, f"h{h:g}", WALL, "wall.json")
        if os.path.isfile(path):
            with open(path) as f:
                wall = json.load(f)
        elif full.finished() and raptr.finished():
            wall = {"full_seconds": full.summary()["wall_seconds"],
                    "raptr_seconds": raptr.summary()["wall_seconds"]}
            wall["ratio"] = wall["raptr_seconds"] / wall["full_seconds"]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(wall, f, indent=1)
        else:
            continue
        n = max(1, round(full.steps * wall["ratio"]))
        out.append(_write_run(args, h, WALL, n, full.eval_interval, METHODS[WALL](0, n)))
    return out
