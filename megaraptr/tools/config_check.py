"""What ``megaraptr-config``'s commands share: training's checks on a config, and its summary.

:func:`check` runs exactly the checks ``megaraptr-train`` makes before it builds anything
(:func:`megaraptr.tools.preflight.validate`) for the run the flags describe, and returns what
they resolved (:class:`Checked`); :func:`resolve_costs` picks the step costs of ``explain`` and
``sweep`` (given, profiled here, or the reference table of :mod:`megaraptr.planning.step_costs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from megaraptr import methods
from megaraptr.core.config import load_ds_config, scheduler_warmup_note
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block, split_ds_config
from megaraptr.models import SIZES
from megaraptr.planning.layout import check_layout, check_tensor_parallel, tensor_parallel_size
from megaraptr.planning.step_costs import REFERENCE, flop_costs, parse_costs, profile
from megaraptr.tools.preflight import validate
from megaraptr.tools.train_args import TrainFlags, parse_args


@dataclass
class Checked:
    """A config that passed training's checks, with what they resolved."""

    path: str
    args: Optional[TrainFlags]
    """The training flags it was checked under (``megaraptr.tools.train_args.parse_args``);
    None for your own model (``--layers N``: ``megaraptr.initialize``'s checks)."""
    raptr: object
    ds_config: dict
    schedule: object
    steps_from: str
    """Where the run length came from ("--train-steps" or the scheduler's total_num_steps)."""
    label: str = ""
    """The model, as printed: ``bert-base`` or ``your model``."""
    notes: Tuple[str, ...] = ()
    """Warnings the checks raised (e.g. an LR warmup as long as the run, a checkpoint that
    failed verification or is unverified) and what the run would change (an adjusted gradient
    accumulation)."""
    resume: Optional[object] = None
    """The checkpoint --load would resume (every file's sha256 verified), or None."""
    layout: object = None
    """The TP x PP x DP layout under tensor parallelism (megaraptr.planning.layout.Layout)."""


def config_steps(ds_config: dict) -> Optional[int]:
    """The config's ``scheduler.params.total_num_steps``, if it is a whole number."""
    steps = ((ds_config.get("scheduler") or {}).get("params") or {}).get("total_num_steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def size_needed(raptr) -> ConfigError:

    sizes = ", ".join(f"{name} ({s['num_layers']} layers)" for name, s in SIZES.items())
    last = (raptr.schedule or [None])[-1]
    if last is not None and last.layers is not None:
        match = [n for n, s in SIZES.items() if s["num_layers"] == last.layers]
        hint = f"the schedule ends at {last.layers:g} layers: " + (" or ".join(match) or "no size")
        return ConfigError("--size", f"required; {hint}; sizes: {sizes}")
    return ConfigError("--size", f"required; sizes: {sizes}")


def _run_length(ds_config: dict, train_steps: Optional[int]):
    if train_steps is not None:
        return train_steps, "--train-steps"
    steps = config_steps(ds_config)
    if steps is None:
        raise ConfigError("--train-steps", "required: the config has no whole-number "
                          "scheduler.params.total_num_steps")
    return steps, "scheduler.params.total_num_steps"


def check(path: str, *, model: str, size: Optional[str], train_steps: Optional[int] = None,
          pipeline_stages: int = 0, extra: Optional[List[str]] = None,
          layers: Optional[int] = None, world_size: Optional[int] = None) -> Checked:
    """Run training's checks on ``path`` for the run these flags describe; with ``layers``,
    the checks ``megaraptr.initialize`` makes for your own model of that many blocks
    (``world_size``: default tensor parallel x pipeline stages, one data-parallel replica).

    Raises:
        ConfigError (and the other MegaraptrErrors training raises): the line training prints.
    """
    if layers is not None:
        return check_own(path, layers=layers, train_steps=train_steps, world_size=world_size)
    ds_config = load_ds_config(path)
    if size is None:
        raise size_needed(parse_raptr_block(ds_config.get("raptr")))
    steps, steps_from = _run_length(ds_config, train_steps)
    argv = ["--deepspeed_config", str(path), "--model", model, "--size", size,
            "--train-steps", str(steps), "--pipeline-stages", str(pipeline_stages)]
    flags = parse_args(argv + list(extra or []))
    if world_size is None:
        world_size = tensor_parallel_size(ds_config) * max(pipeline_stages, 1)
    plan = validate(flags, world_size, verify="checksums")  # one process: it hashes every file
    schedule = build_schedule(plan.raptr, num_layers=plan.num_layers,
                              total_steps=flags.train_steps)
    notes = (plan.resume.notes if plan.resume else ()) + plan.notes
    return Checked(str(path), flags, plan.raptr, plan.ds_config, schedule, steps_from,
                   f"{flags.model}-{flags.size}", notes, resume=plan.resume, layout=plan.layout)


def check_own(path: str, *, layers: int, train_steps: Optional[int],
              world_size: Optional[int] = None) -> Checked:
    """What ``megaraptr.initialize`` checks for your own model of ``layers`` marked blocks
    (under tensor parallelism: the config and the layout; whether your blocks can be split is
    known only when initialize sees them)."""
    if layers < 1:
        raise ConfigError("--layers", f"{layers}; allowed: 1 or more (your model's blocks)")
    raptr, ds_config = split_ds_config(path)
    steps, steps_from = _run_length(ds_config, train_steps)
    schedule = build_schedule(raptr, num_layers=layers, total_steps=steps)
    tensor = tensor_parallel_size(ds_config)
    check_tensor_parallel(ds_config, tensor=tensor)
    layout = check_layout(world=world_size or tensor, tensor=tensor) if tensor > 1 else None
    note = scheduler_warmup_note(ds_config, steps)
    return Checked(str(path), None, raptr, ds_config, schedule, steps_from, "your model",
                   (note,) if note else (), layout=layout)


def describe_method(raptr, schedule) -> str:
    """"raptr 6-8-10-12 in 4 stages, bernoulli sampling" and the like."""
    if not raptr.trains_subnetworks:
        return "the full model every step" + ("" if raptr.enabled else " (raptr disabled)")
    staged = [s for s in schedule.stages if not s.warmup]
    warmup = schedule.warmup_steps
    text = methods.get(raptr.method).summary(staged)
    text += f" after {warmup:,} full-model warmup steps" if warmup else ""
    return text + f", {schedule.sampling} sampling"


def run_summary(checked: Checked) -> str:
    args, ds = checked.args, checked.ds_config
    steps = checked.schedule.total_steps
    precision = "bf16" if (ds.get("bf16") or {}).get("enabled") else \
        "fp16" if (ds.get("fp16") or {}).get("enabled") else "fp32"
    zero = (ds.get("zero_optimization") or {}).get("stage", 0)
    pipeline = args.pipeline_stages if args is not None else 0
    parts = [f"{checked.label} ({checked.schedule.num_layers} layers), "
             f"{steps:,} steps ({checked.steps_from})",
             f"{describe_method(checked.raptr, checked.schedule)}, layer FLOPs "
             f"{checked.schedule.expected_flops_fraction():.3f} of full",
             f"ZeRO-{zero}, {precision}, {ds.get('train_micro_batch_size_per_gpu', '?')} "
             f"sequences x {ds.get('gradient_accumulation_steps', 1)} accumulation per GPU"
             + (f", pipeline of {pipeline} stages" if pipeline else "")
             + (f", {checked.layout.describe()}" if checked.layout is not None else "")]
    if checked.resume is not None:
        step = (checked.resume.manifest or {}).get("step")
        parts.append(f"resumes {checked.resume.path}" + (f" at step {step}" if step else "")
                     + (", verified" if checked.resume.manifest else ", unverified"))
    return "; ".join(parts)


def resolve_costs(opts, checked: Checked):
    """The step costs explain and sweep use: --costs, --profile, the reference table, or None."""

    if opts.costs:
        return parse_costs(opts.costs)
    args = checked.args
    if args is None:  # your own model: from its shape, when given
        if not getattr(opts, "hidden", None):
            return None
        return flop_costs(opts.hidden, seq_len=opts.seq_len, vocab_size=opts.vocab_size,
                          mlm=opts.mlm, ffn=opts.ffn or 0)
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
