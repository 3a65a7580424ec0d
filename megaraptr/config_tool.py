"""``megaraptr-config``: validate, explain and sweep DeepSpeed configs with a raptr block.

    megaraptr-config validate ds_configs/bert_base_raptr_zero2.json --size base
    megaraptr-config explain ds_configs/bert_base_raptr_zero2.json --model bert --size base
    megaraptr-config explain ds.json --model gpt --size 1.3b --pipeline-stages 4
    megaraptr-config explain ds.json --size tiny --profile --device cpu
    megaraptr-config sweep ds.json --model bert --size base --schedules 6-8-10-12,4-6-8-10-12 \\
        --lengths equal,0.34 --warmup 0,0.1 --baseline --out runs/sweep

- ``validate FILE``: exactly the checks ``megaraptr-train`` makes before it builds anything
  (:func:`megaraptr.preflight.validate` on the training flags this makes: ``--model``, ``--size``,
  ``--train-steps``, ``--pipeline-stages`` and any other training flag given after FILE, such as
  ``--kernels auto`` or ``--load DIR``); prints ``ok: ...`` in one line.
- ``explain FILE``: the same checks, then the stage table (steps, keep probability, expected
  active layers, layer-FLOPs fraction, mean step time and ideal wall-clock speedup; see
  :mod:`megaraptr.step_costs` for the cost model and where its costs come from) and, with
  ``--pipeline-stages N``, the partition planned for each stage.
- ``sweep FILE``: one config per grid point (schedules x last-stage lengths x full-model
  warmups x run lengths, plus the full-model baseline with ``--baseline``), each checked like
  ``validate``, and ``index.json`` / ``index.csv`` with every point's expected layer-FLOPs
  fraction and ideal speedup (:mod:`megaraptr.config_sweep`).

``--train-steps`` defaults to the config's ``scheduler.params.total_num_steps``. Bad input:
one line on stderr (the message training prints), exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import List, Optional

from megaraptr.argparsing import OneLineParser
from megaraptr.errors import ConfigError, MegaraptrError

PROG = "megaraptr-config"


@dataclass
class Checked:
    """A config that passed training's checks, with what they resolved."""

    path: str
    args: argparse.Namespace
    """The training flags it was checked under (``megaraptr.cli.parse_args``)."""
    raptr: object
    ds_config: dict
    schedule: object
    steps_from: str
    """Where the run length came from ("--train-steps" or the scheduler's total_num_steps)."""


def config_steps(ds_config: dict) -> Optional[int]:
    """The config's ``scheduler.params.total_num_steps``, if it is a whole number."""
    steps = ((ds_config.get("scheduler") or {}).get("params") or {}).get("total_num_steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def _size_needed(raptr) -> ConfigError:
    from megaraptr.models import SIZES

    sizes = ", ".join(f"{name} ({s['num_layers']} layers)" for name, s in SIZES.items())
    last = (raptr.schedule or [None])[-1]
    if last is not None and last.layers is not None:
        match = [n for n, s in SIZES.items() if s["num_layers"] == last.layers]
        hint = f"the schedule ends at {last.layers:g} layers: " + (" or ".join(match) or "no size")
        return ConfigError("--size", f"required; {hint}; sizes: {sizes}")
    return ConfigError("--size", f"required; sizes: {sizes}")


def check(path: str, *, model: str, size: Optional[str], train_steps: Optional[int] = None,
          pipeline_stages: int = 0, extra: Optional[List[str]] = None) -> Checked:
    """Run training's checks on ``path`` for the run these flags describe.

    Raises:
        ConfigError (and the other MegaraptrErrors training raises): the line training prints.
    """
    from megaraptr.cli import parse_args
    from megaraptr.config import load_ds_config, parse_raptr_block
    from megaraptr.models import num_layers
    from megaraptr.schedule import build_schedule
    from megaraptr.preflight import validate

    ds_config = load_ds_config(path)
    if size is None:
        raise _size_needed(parse_raptr_block(ds_config.get("raptr")))
    steps, steps_from = train_steps, "--train-steps"
    if steps is None:
        steps, steps_from = config_steps(ds_config), "scheduler.params.total_num_steps"
        if steps is None:
            raise ConfigError("--train-steps", "required: the config has no whole-number "
                              "scheduler.params.total_num_steps")
    argv = ["--deepspeed_config", str(path), "--model", model, "--size", size,
            "--train-steps", str(steps), "--pipeline-stages", str(pipeline_stages)]
    args = parse_args(argv + list(extra or []))
    raptr, prepared = validate(args)
    schedule = build_schedule(raptr, num_layers=num_layers(size), total_steps=args.train_steps)
    return Checked(str(path), args, raptr, prepared, schedule, steps_from)


def describe_method(raptr, schedule) -> str:
    """"raptr 6-8-10-12 in 4 stages, bernoulli sampling" and the like."""
    if not raptr.trains_subnetworks:
        return "the full model every step" + ("" if raptr.enabled else " (raptr disabled)")
    staged = [s for s in schedule.stages if s.name != "warmup"]
    warmup = schedule.stages[0].num_steps if schedule.stages[0].name == "warmup" else 0
    if raptr.method in ("raptr", "stacking"):
        depths = "-".join(f"{s.expected_layers:.4g}" for s in staged)
        text = f"{raptr.method} {depths} in {len(staged)} stages"
    else:
        text = raptr.method
    text += f" after {warmup:,} full-model warmup steps" if warmup else ""
    return text + f", {schedule.sampling} sampling"


def run_summary(checked: Checked) -> str:
    args, ds = checked.args, checked.ds_config
    precision = "bf16" if (ds.get("bf16") or {}).get("enabled") else \
        "fp16" if (ds.get("fp16") or {}).get("enabled") else "fp32"
    zero = (ds.get("zero_optimization") or {}).get("stage", 0)
    parts = [f"{args.model}-{args.size} ({checked.schedule.num_layers} layers), "
             f"{args.train_steps:,} steps ({checked.steps_from})",
             f"{describe_method(checked.raptr, checked.schedule)}, layer FLOPs "
             f"{checked.schedule.expected_flops_fraction():.3f} of full",
             f"ZeRO-{zero}, {precision}, {ds.get('train_micro_batch_size_per_gpu', '?')} "
             f"sequences x {ds.get('gradient_accumulation_steps', 1)} accumulation per GPU"
             + (f", pipeline of {args.pipeline_stages} stages" if args.pipeline_stages else "")]
    return "; ".join(parts)


def resolve_costs(opts, checked: Checked):
    """The step costs explain and sweep use: --costs, --profile, the reference table, or None."""
    from megaraptr.step_costs import REFERENCE, parse_costs, profile

    if opts.costs:
        return parse_costs(opts.costs)
    args = checked.args
    if getattr(opts, "profile", False):
        import torch

        device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device", "cuda is not available here; use --device cpu")
        bf16 = (checked.ds_config.get("bf16") or {}).get("enabled") and device == "cuda"
        cpu = device == "cpu"
        return profile(args.model, args.size, device=device, precision="bf16" if bf16 else "fp32",
                       micro_batch=int(checked.ds_config.get("train_micro_batch_size_per_gpu", 1)),
                       seq_len=args.seq_len, vocab_size=args.vocab_size,
                       steps=opts.profile_steps or (3 if cpu else 10), warmup=1 if cpu else 3)
    return REFERENCE.get((args.model, args.size))


def table(rows: List[dict], columns: List[tuple]) -> List[str]:
    """Right-aligned text table; ``columns`` are (header, key, format)."""
    cells = [[h for h, _, _ in columns]]
    cells += [[fmt.format(r[key]) if r.get(key, "") != "" else "" for _, key, fmt in columns]
              for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(line, widths))).rstrip() for line in cells]


def explain(opts, extra: List[str]) -> List[str]:
    """The lines ``explain`` prints."""
    from megaraptr.step_costs import stage_rows

    checked = check(opts.file, model=opts.model, size=opts.size, train_steps=opts.train_steps,
                    pipeline_stages=opts.pipeline_stages, extra=extra)
    costs = resolve_costs(opts, checked)
    schedule, raptr = checked.schedule, checked.raptr
    fixed = [i for i in range(schedule.num_layers) if i in schedule.stages[-1].fixed]
    lines = [f"config: {checked.path}", f"run: {run_summary(checked)}",
             f"raptr: fixed layers {fixed}, scaling {schedule.scaling}, skipped layers "
             f"{raptr.skipped_layers}" if raptr.trains_subnetworks else "raptr: off"]
    if costs is None:
        lines.append(f"costs: none known for {opts.model}-{opts.size}; give --costs "
                     "layer=MS,fixed=MS or --profile for step times and speedups")
    else:
        lines.append(f"costs: t(k) = {costs.fixed:.4g} ms + {costs.per_layer:.4g} ms x k active "
                     f"layers; {costs.source}")
    rows = stage_rows(schedule, costs)
    columns = [("stage", "stage", "{}"), ("steps", "steps", "{}"), ("keep p", "keep_prob", "{}"),
               ("E[layers]", "expected_layers", "{:.2f}"), ("layer FLOPs", "layer_flops", "{:.3f}")]
    if costs is not None:
        columns += [("step ms", "step_ms", "{:.1f}"), ("ideal speedup", "ideal_speedup",
                                                       "{:.3f}x")]
    lines += [""] + table(rows, columns) + [""]
    whole = rows[-1]
    lines.append(f"whole run: layer FLOPs {whole['layer_flops']:.3f} of full training "
                 f"({1 / whole['layer_flops']:.3f}x fewer)" + (
                     f"; ideal wall-clock speedup {whole['ideal_speedup']:.3f}x" if costs else ""))
    if opts.pipeline_stages:
        lines += pipeline_lines(checked, opts.pipeline_stages)
    return lines


def pipeline_lines(checked: Checked, num_stages: int) -> List[str]:
    """The partition training would plan for each stage (from the config's pipeline costs)."""
    from megaraptr.balance import Costs, imbalance, plan_partitions
    from megaraptr.config import PipelineSpec

    spec = checked.raptr.pipeline or PipelineSpec()
    if spec.costs is not None:
        costs, source = Costs.from_spec(spec.costs), "raptr.pipeline.costs"
    else:
        costs, source = Costs(layer=1.0), ("layers only: training measures the embedding and "
                                           "head too and may plan otherwise")
    plan = plan_partitions(checked.schedule, costs, num_stages, repartition=spec.repartition,
                           min_gain=spec.repartition_min_gain)
    mode = f"re-partitioning at stage changes that gain >= {spec.repartition_min_gain:g}" \
        if spec.repartition else "one static partition"
    lines = ["", f"pipeline: {num_stages} stages, {checked.schedule.sampling} sampling, {mode}; "
             f"costs {source}"]
    for stage, parts in zip(checked.schedule.stages, plan):
        lines.append(f"  {stage.name}: partition {list(parts)}, predicted imbalance "
                     f"{imbalance(costs, parts, stage):.3f}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    from megaraptr.models import MODELS, SIZES

    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    helps = {"validate": "training's checks; prints ok: and a summary",
             "explain": "the stage table with layer FLOPs and ideal wall-clock speedups",
             "sweep": "write a grid of configs and an index for a tuning run"}
    parsers = {}
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("file", metavar="FILE", help="DeepSpeed JSON config (give it first: "
                       "training flags after it pass through to the checks)")
        s.add_argument("--model", choices=sorted(MODELS), default="bert")
        s.add_argument("--size", choices=list(SIZES), default=None)
        s.add_argument("--pipeline-stages", type=int, default=0, metavar="N")
        if name != "sweep":
            s.add_argument("--train-steps", type=int, default=None, metavar="N",
                           help="default: the config's scheduler.params.total_num_steps")
        if name != "validate":
            s.add_argument("--costs", default=None, metavar="layer=MS,fixed=MS",
                           help="step time t(k) = fixed + layer * k; default: --profile, else "
                                "the built-in reference for the model and size (one H200)")
        parsers[name] = s
    e = parsers["explain"]
    e.add_argument("--profile", action="store_true", help="measure the costs here: plain "
                   "PyTorch steps at k = 0, L/2, L of one micro-batch of random tokens")
    e.add_argument("--device", choices=["cpu", "cuda"], default=None)
    e.add_argument("--profile-steps", type=int, default=None, metavar="N",
                   help="timed steps per k (cpu 3, cuda 10)")
    from megaraptr.config_sweep import add_arguments

    add_arguments(parsers["sweep"])
    return p


def main(argv: Optional[List[str]] = None) -> int:
    try:
        opts, extra = build_parser().parse_known_args(argv)
        if opts.command == "validate":
            checked = check(opts.file, model=opts.model, size=opts.size,
                            train_steps=opts.train_steps, pipeline_stages=opts.pipeline_stages,
                            extra=extra)
            lines = [f"ok: {checked.path}: {run_summary(checked)}"]
        elif opts.command == "explain":
            lines = explain(opts, extra)
        else:
            from megaraptr.config_sweep import sweep

            lines = sweep(opts, extra)
    except MegaraptrError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
