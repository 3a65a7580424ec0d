"""``megaraptr-config``: validate, explain and sweep DeepSpeed configs with a raptr block.

    megaraptr-config validate ds_configs/bert_base_raptr_zero2.json --size base
    megaraptr-config explain ds_configs/bert_base_raptr_zero2.json --model bert --size base
    megaraptr-config explain ds.json --model gpt --size 1.3b --pipeline-stages 4
    megaraptr-config explain ds_configs/gpt_1_3b_raptr_tp8_pp4.json --model gpt --size 1.3b \
        --pipeline-stages 4 --world-size 32
    megaraptr-config explain ds.json --size tiny --profile --device cpu
    megaraptr-config sweep ds.json --model bert --size base --schedules 6-8-10-12,4-6-8-10-12 \\
        --lengths equal,0.34 --warmup 0,0.1 --baseline --out runs/sweep

- ``validate FILE``: exactly the checks ``megaraptr-train`` makes before it builds anything
  (:func:`megaraptr.tools.preflight.validate` on the training flags this makes: ``--model``, ``--size``,
  ``--train-steps``, ``--pipeline-stages`` and any other training flag given after FILE, such as
  ``--kernels auto`` or ``--load DIR``); prints ``ok: ...`` in one line.
- ``explain FILE``: the same checks, then the stage table (steps, keep probability, expected
  active layers, layer-FLOPs fraction, mean step time and ideal wall-clock speedup; see
  :mod:`megaraptr.planning.step_costs` for the cost model and where its costs come from) and, with
  ``--pipeline-stages N``, the partition planned for each stage.
- ``sweep FILE``: one config per grid point (schedules x last-stage lengths x full-model
  warmups x run lengths, plus the full-model baseline with ``--baseline``), each checked like
  ``validate``, and ``index.json`` / ``index.csv`` with every point's expected layer-FLOPs
  fraction and ideal speedup (:mod:`megaraptr.tools.config_sweep`).

``--train-steps`` defaults to the config's ``scheduler.params.total_num_steps``; ``--world-size``
(for ``"tensor_parallel": {"autotp_size": T}``) to T x pipeline stages, and ``explain`` shows
the TP x PP x DP layout. Bad input: one line on stderr (the message training prints), exit
code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from megaraptr.core.config import PipelineSpec
from megaraptr.errors import MegaraptrError
from megaraptr.models import MODELS, SIZES
from megaraptr.planning.balance import Costs, imbalance, plan_partitions
from megaraptr.planning.step_costs import stage_rows
from megaraptr.tools import config_suggest
from megaraptr.tools.argparsing import OneLineParser
from megaraptr.tools.config_check import Checked, check, resolve_costs, run_summary, table
from megaraptr.tools.config_sweep import add_arguments, sweep

PROG = "megaraptr-config"


def explain(opts, extra: List[str]) -> List[str]:
    """The lines ``explain`` prints."""

    checked = check(opts.file, model=opts.model, size=opts.size, train_steps=opts.train_steps,
                    pipeline_stages=opts.pipeline_stages, extra=extra, layers=opts.layers,
                    world_size=opts.world_size)
    costs = resolve_costs(opts, checked)
    unit = costs.unit if costs is not None else "ms"
    schedule, raptr = checked.schedule, checked.raptr
    fixed = [i for i in range(schedule.num_layers) if i in schedule.stages[-1].fixed]
    lines = [f"config: {checked.path}", f"run: {run_summary(checked)}",
             f"raptr: fixed layers {fixed}, scaling {schedule.scaling}, skipped layers "
             f"{raptr.skipped_layers}" if raptr.trains_subnetworks else "raptr: off"]
    if checked.layout is not None:
        lines.append(parallel_line(checked.layout))
    lines += [f"note: {note}" for note in checked.notes]
    if costs is None:
        hint = "--hidden H (a FLOP estimate from your model's shape)" if opts.layers else \
            "--profile"
        lines.append(f"costs: none known for {checked.label}; give --costs layer=MS,fixed=MS "
                     f"or {hint} for step times and speedups")
    else:
        lines.append(f"costs: t(k) = {costs.fixed:.4g} {unit} + {costs.per_layer:.4g} {unit} x "
                     f"k active layers; {costs.source}")
    rows = stage_rows(schedule, costs)
    columns = [("stage", "stage", "{}"), ("steps", "steps", "{}"), ("keep p", "keep_prob", "{}"),
               ("E[layers]", "expected_layers", "{:.2f}"), ("layer FLOPs", "layer_flops", "{:.3f}")]
    if costs is not None:
        step_format = "{:.1f}" if unit == "ms" else "{:.4g}"
        columns += [(f"step {unit}", "step_ms", step_format),
                    ("ideal speedup", "ideal_speedup", "{:.3f}x")]
    lines += [""] + table(rows, columns) + [""]
    whole = rows[-1]
    lines.append(f"whole run: layer FLOPs {whole['layer_flops']:.3f} of full training "
                 f"({1 / whole['layer_flops']:.3f}x fewer)" + (
                     f"; ideal {'wall-clock' if unit == 'ms' else 'FLOP-bound'} speedup "
                     f"{whole['ideal_speedup']:.3f}x" if costs else ""))
    if opts.pipeline_stages:
        lines += pipeline_lines(checked, opts.pipeline_stages)
    return lines


def parallel_line(layout) -> str:
    """The tensor x pipeline x data layout, in one line."""
    return (f"parallel: {layout.describe()}: each layer split over {layout.tensor} ranks "
            f"(one node's GPUs, ranks consecutive), {layout.pipeline} pipeline stage(s), "
            f"{layout.data} data-parallel replica(s); a skipped layer runs none of its "
            f"{layout.tensor}-way all-reduces")


def pipeline_lines(checked: Checked, num_stages: int) -> List[str]:
    """The partition training would plan for each stage (from the config's pipeline costs)."""

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

    p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    helps = {"validate": "training's checks; prints ok: and a summary",
             "explain": "the stage table with layer FLOPs and ideal wall-clock speedups",
             "sweep": "write a grid of configs and an index for a tuning run"}
    parsers = {}
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        s.add_argument("file", metavar="FILE", help="DeepSpeed JSON config (give it first: "
                       "training flags after it pass through to the checks)")
        s.add_argument("--model", default="bert", metavar="MODEL",
                       help=f"{', '.join(sorted(MODELS))}, or hf:bert, hf:gpt2, hf:llama, "
                            "hf:PATH (as megaraptr-train takes)")
        s.add_argument("--size", choices=list(SIZES), default=None)
        if name != "sweep":
            s.add_argument("--layers", type=int, default=None, metavar="N",
                           help="your own model of N marked blocks (megaraptr.initialize's "
                                "checks) instead of --model/--size")
        s.add_argument("--pipeline-stages", type=int, default=0, metavar="N")
        s.add_argument("--world-size", type=int, default=None, metavar="N",
                       help="ranks of the run (tensor parallelism; default T x P)")
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
    e.add_argument("--hidden", type=int, default=None, metavar="H",
                   help="with --layers: your model's width, for a FLOP-proportional cost estimate")
    e.add_argument("--ffn", type=int, default=None, metavar="F", help="with --hidden (default 4H)")
    e.add_argument("--seq-len", type=int, default=1024, metavar="T", help="with --hidden")
    e.add_argument("--vocab-size", type=int, default=50304, metavar="V", help="with --hidden")
    e.add_argument("--mlm", action="store_true",
                   help="with --hidden: the head runs on the 15%% masked tokens only (BERT)")
    g = sub.add_parser("suggest", help="a RAPTR schedule for a depth and a layer-FLOPs target",
                       description=config_suggest.__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--layers", type=int, required=True, metavar="N", help="the model's depth")
    g.add_argument("--flops", type=float, default=0.75, metavar="F",
                   help="target fraction of full training's layer FLOPs")
    g.add_argument("--stages", type=int, default=4, metavar="S", help="equal stages (at most)")
    g.add_argument("--train-steps", type=int, default=100_000, metavar="N",
                   help="the run length the schedule is checked against")
    e.add_argument("--device", choices=["cpu", "cuda"], default=None)
    e.add_argument("--profile-steps", type=int, default=None, metavar="N",
                   help="timed steps per k (cpu 3, cuda 10)")

    add_arguments(parsers["sweep"])
    return p


def main(argv: Optional[List[str]] = None) -> int:
    try:
        opts, extra = build_parser().parse_known_args(argv)
        if opts.command == "validate":
            checked = check(opts.file, model=opts.model, size=opts.size,
                            train_steps=opts.train_steps, pipeline_stages=opts.pipeline_stages,
                            extra=extra, layers=opts.layers, world_size=opts.world_size)
            lines = [f"ok: {checked.path}: {run_summary(checked)}"]
            lines += [f"note: {note}" for note in checked.notes]
        elif opts.command == "suggest":
            lines = config_suggest.suggest(opts.layers, opts.flops, opts.stages, opts.train_steps)
        elif opts.command == "explain":
            lines = explain(opts, extra)
        else:

            lines = sweep(opts, extra)
    except MegaraptrError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
