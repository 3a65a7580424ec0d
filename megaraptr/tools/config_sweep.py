"""The grid behind ``megaraptr-config sweep``: one DeepSpeed config per point, and an index.

    megaraptr-config sweep ds_configs/bert_base_raptr_zero2.json --model bert --size base \\
        --schedules 6-8-10-12,4-6-8-10-12 --lengths equal,0.34 --warmup 0,0.1 \\
        --train-steps 100000 --baseline --out runs/sweep

Axes (comma lists; each defaults to the config's own setting):

- ``--schedules``: expected depths per stage (``raptr.schedule``), e.g. ``6-8-10-12``;
- ``--lengths``: ``equal`` stages (the paper), or a number F: the last (full-model) stage
  takes F of the staged steps and the others share the rest equally (a longer full-model
  stage, F = 0.34, was the best RAPTR setting of the README's quality study);
- ``--warmup``: ``full_model_warmup_steps`` as a fraction of the run (the paper's UL2 recipe
  trains the full model first), rounded to whole steps;
- ``--train-steps``: run lengths; the scheduler's ``total_num_steps`` is set to each (pass the
  same ``--train-steps`` to ``megaraptr-train``: the index gives the command);
- ``--baseline``: one full-model config (``"enabled": false``) per run length.

Each point is written to ``OUT/NAME.json`` (``NAME`` = ``s6-8-10-12_eq_wu0_n100000``,
``s6-8-10-12_last0.34_wu0.1_n100000``, ``full_n100000``) with the TensorBoard job named after
it, then checked exactly as ``validate`` checks (a failing point is removed and reported).
``OUT/index.json`` and ``OUT/index.csv`` list every point's stages, expected layer-FLOPs
fraction, ideal wall-clock speedup (:mod:`megaraptr.planning.step_costs`) and launch command.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
from typing import List

from megaraptr import methods
from megaraptr.core.config import load_ds_config
from megaraptr.errors import ConfigError, MegaraptrError
from megaraptr.methods import parse_raptr_block
from megaraptr.planning.step_costs import ideal_speedup
from megaraptr.tools.config_check import check, config_steps, resolve_costs, size_needed, table

INDEX_COLUMNS = ["name", "file", "train_steps", "schedule", "lengths", "full_model_warmup_steps",
                 "stages", "layer_flops_fraction", "ideal_speedup", "command"]


def add_arguments(p) -> None:
    """The sweep's own flags (FILE, --model, --size, --costs come from megaraptr.tools.config)."""
    p.add_argument("--schedules", default=None, metavar="S[,S...]",
                   help='expected depths, e.g. "6-8-10-12,4-6-8-10-12" (default: the config\'s)')
    p.add_argument("--lengths", default="equal", metavar="L[,L...]",
                   help='"equal", or the last stage\'s fraction of the staged steps (e.g. 0.34)')
    p.add_argument("--warmup", default="0", metavar="W[,W...]",
                   help="full-model warmup as a fraction of the run (e.g. 0,0.1)")
    p.add_argument("--train-steps", default=None, metavar="N[,N...]",
                   help="run lengths (default: the config's scheduler.params.total_num_steps)")
    p.add_argument("--baseline", action="store_true",
                   help='add a full-model config ("enabled": false) per run length')
    p.add_argument("--out", required=True, metavar="DIR")


def _items(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _fraction(text: str, key: str, low: float, low_open: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not (low < value if low_open else low <= value) or value >= 1:
        bound = f"{'>' if low_open else '>='} {low:g} and < 1"
        raise ConfigError(key, f"{text!r}: expected a fraction {bound}")
    return value


def _steps(opts, base: dict) -> List[int]:

    if opts.train_steps is None:
        steps = config_steps(base)
        if steps is None:
            raise ConfigError("--train-steps", "required: the config has no whole-number "
                              "scheduler.params.total_num_steps")
        return [steps]
    out = []
    for text in _items(opts.train_steps):
        if not text.isdigit() or int(text) < 1:
            raise ConfigError("--train-steps", f"{text!r}: expected whole numbers >= 1")
        out.append(int(text))
    return out


def point_config(base: dict, *, name: str, steps: int, schedule, length, warmup: float) -> dict:
    """The base config with one grid point applied (``schedule`` None: the full baseline)."""
    config = json.loads(json.dumps(base))
    block = config.setdefault("raptr", {})
    if schedule is None:
        block["enabled"] = False
    else:
        block["enabled"] = True
        block["full_model_warmup_steps"] = round(warmup * steps)
        if length == "equal":
            block["schedule"] = schedule
        else:
            depths = [float(d) if "." in d else int(d) for d in schedule.split("-")]
            block["schedule"] = [{"layers": d} for d in depths[:-1]] + \
                [{"layers": depths[-1], "fraction": length}]
    params = (config.get("scheduler") or {}).get("params")
    if isinstance(params, dict):
        params["total_num_steps"] = steps
    if isinstance(config.get("tensorboard"), dict):
        config["tensorboard"]["job_name"] = name
    return config


def sweep(opts, extra: List[str]) -> List[str]:
    """Write the grid and its index; returns the lines to print."""

    base = load_ds_config(opts.file)
    raptr = parse_raptr_block(base.get("raptr"))
    if opts.size is None:
        raise size_needed(raptr)
    if not methods.get(raptr.method).sweepable:
        allowed = ", ".join(f'"{m.name}"' for m in methods.METHODS.values() if m.sweepable)
        raise ConfigError("raptr.method", f'"{raptr.method}": sweep varies RAPTR schedules; '
                          f"allowed: {allowed}")
    own = (base.get("raptr") or {}).get("schedule")
    if opts.schedules is None and not isinstance(own, str):
        raise ConfigError("--schedules", 'required: the config has no "6-8-10-12"-style schedule')
    schedules = _items(opts.schedules) if opts.schedules is not None else [own]
    lengths = [t if t == "equal" else _fraction(t, "--lengths", 0.0, True)
               for t in _items(opts.lengths)]
    warmups = [_fraction(t, "--warmup", 0.0, False) for t in _items(opts.warmup)]
    if not (schedules and lengths and warmups):
        raise ConfigError("--schedules/--lengths/--warmup", "each needs at least one value")
    os.makedirs(opts.out, exist_ok=True)
    rows, costs = [], None
    for steps in _steps(opts, base):
        grid = [(None, None, 0.0)] if opts.baseline else []
        grid += list(itertools.product(schedules, lengths, warmups))
        for schedule, length, warmup in grid:
            if schedule is None:
                name = f"full_n{steps}"
            else:
                name = f"s{schedule}_{'eq' if length == 'equal' else f'last{length:g}'}" \
                       f"_wu{warmup:g}_n{steps}"
            path = os.path.join(opts.out, f"{name}.json")
            with open(path, "w") as f:
                json.dump(point_config(base, name=name, steps=steps, schedule=schedule,
                                       length=length, warmup=warmup), f, indent=2)
            try:
                checked = check(path, model=opts.model, size=opts.size, train_steps=steps,
                                pipeline_stages=opts.pipeline_stages, extra=extra,
                                world_size=opts.world_size)
            except MegaraptrError as err:
                os.remove(path)
                raise ConfigError(f"sweep point {name}", str(err)) from None
            if costs is None:
                costs = resolve_costs(opts, checked) or False
            command = " ".join(["megaraptr-train --deepspeed_config", path, "--model",
                                opts.model, "--size", opts.size, "--train-steps", str(steps)]
                               + (["--pipeline-stages", str(opts.pipeline_stages)]
                                  if opts.pipeline_stages else []) + list(extra))
            sched = checked.schedule
            rows.append({"name": name, "file": path, "train_steps": steps,
                         "schedule": schedule or "full", "lengths": length or "",
                         "full_model_warmup_steps": checked.raptr.full_model_warmup_steps,
                         "stages": " ".join(f"{s.name}:{s.first_step}-{s.last_step}"
                                            for s in sched.stages),
                         "layer_flops_fraction": round(sched.expected_flops_fraction(), 4),
                         "ideal_speedup": round(ideal_speedup(sched, costs), 4) if costs else "",
                         "command": command})
    index = {"source": opts.file, "model": opts.model, "size": opts.size,
             "costs": None if not costs else {"fixed_ms": costs.fixed,
                                              "per_layer_ms": costs.per_layer,
                                              "source": costs.source},
             "points": rows}
    with open(os.path.join(opts.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    with open(os.path.join(opts.out, "index.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    columns = [("config", "name", "{}"), ("layer FLOPs", "layer_flops_fraction", "{:.3f}"),
               ("ideal speedup", "ideal_speedup", "{:.3f}x")]
    source = f"costs: {costs.source}" if costs else "costs: none known (give --costs)"
    return table(rows, columns) + [source, f"wrote {len(rows)} configs, index.json and "
                                           f"index.csv to {opts.out}; each passed training's "
                                           "checks; launch commands in the index"]
