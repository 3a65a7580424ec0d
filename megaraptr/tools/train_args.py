"""Command-line surface of ``megaraptr-train``: the flags, their defaults and checks.

argparse rejects malformed flags with exit code 2; :func:`parse_args` adds the checks that
need more than one flag and the launchers' conventions (``--local_rank`` from the deepspeed
launcher, ``--deepspeed`` as a no-op switch like DeepSpeed's own scripts), and returns the
flags as a frozen :class:`TrainFlags`: the parts of a run read them, none writes them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import List, Optional, Tuple

from megaraptr.models import MODELS, SIZES
from megaraptr.tools.extra_eval import extra_eval_arg

DEFAULT_SAVE_INTERVAL = 1000
"""--save-interval's default: a long run loses at most this many steps to a crash."""
DEFAULT_SEQ_LEN = {"tiny": 128, "mini": 128, "narrow": 128, "small": 128, "slim": 128,
                   "base": 512, "medium": 1024, "1.3b": 1024, "1.6b": 1024}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


class _ShowDefaults(argparse.HelpFormatter):
    """``--help`` names each flag's default, unless the help already says it or there is none
    (None, False: the flag is off unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megaraptr-train", description="Pretrain a BERT, GPT or Hugging Face model with "
                                "RAPTR (or a baseline) under DeepSpeed.",
                                formatter_class=_ShowDefaults)
    p.add_argument("--deepspeed_config", "--deepspeed-config", required=True, metavar="FILE",
                   help="DeepSpeed JSON config with an optional \"raptr\" block")
    p.add_argument("--deepspeed", action="store_true", help="accepted for compatibility")
    p.add_argument("--model", default="bert", metavar="MODEL",
                   help=f"{', '.join(sorted(MODELS))}, or a Hugging Face model: hf:bert, "
                        "hf:gpt2, hf:llama (shaped by --size) or hf:PATH (a local config.json)")
    p.add_argument("--size", choices=list(SIZES), default="tiny",
                   help="layers x width of the model (docs/training.md lists them)")
    p.add_argument("--objective", choices=["causal", "ul2"], default="causal",
                   help="--model gpt's training objective: next-token (causal) or UL2's "
                        "mixture of denoisers (ul2); eval is next-token either way")
    p.add_argument("--ul2-s-share", type=float, default=None, metavar="F",
                   help="share of UL2's S-denoiser (prefix LM) rows; the six span denoisers "
                        "split the rest (default 1/7 each, as in the paper)")
    p.add_argument("--data", metavar="PATH", nargs="+", default=None,
                   help="prepared shards (a folder with index.json, alone) or one or more raw "
                        ".txt/.jsonl(.gz) files and folders, prepared on the fly and cached "
                        "(docs/data.md); default: the built-in sample")
    p.add_argument("--tokenizer", metavar="FILE", default=None,
                   help="tokenizer.json to use instead of training one on the data")
    p.add_argument("--vocab-size", type=_positive, default=8192,
                   help="size of the tokenizer trained on raw --data")
    p.add_argument("--seq-len", type=_positive, default=None,
                   help="tokens per sequence (default by size: tiny/mini 128, base 512, "
                        "medium 1024)")
    p.add_argument("--train-steps", type=_positive, required=True,
                   help="the run's total optimizer steps; a resumed run continues up to it")
    p.add_argument("--exit-at-step", type=_positive, default=None,
                   help="save and exit cleanly after this step (the schedule still spans "
                        "--train-steps)")
    p.add_argument("--log-interval", type=_non_negative, default=None, metavar="N",
                   help="print one line every N steps (rank 0): step, loss, LR, layers, "
                        "tokens/s, ETA (0: none). Default: none on a terminal (the progress "
                        "bar), else every max(1, min(100, train steps / 10)) steps")
    p.add_argument("--eval-interval", type=_non_negative, default=0,
                   help="evaluate the full model every N steps (always at start and end)")
    p.add_argument("--eval-sequences", type=_positive, default=64,
                   help="held-out sequences per evaluation")
    p.add_argument("--extra-eval", type=extra_eval_arg, action="append", default=[],
                   metavar="NAME=DIR", help="also evaluate on DIR's val split (prepared with the "
                   "training data's tokenizer), reported as NAME; repeatable")
    p.add_argument("--save", metavar="DIR", default=None,
                   help="checkpoint folder: saved every --save-interval steps, every "
                        "--save-every-minutes, at the end, and on SIGTERM/SIGUSR1; complete or "
                        "absent, one run at a time (the run locks the folder)")
    p.add_argument("--save-interval", type=_non_negative, default=DEFAULT_SAVE_INTERVAL,
                   metavar="N", help="save every N steps (0: only at the end and on a stop; "
                   f"default {DEFAULT_SAVE_INTERVAL})")
    p.add_argument("--save-every-minutes", type=_non_negative_float, default=0.0, metavar="M",
                   help="also save on the first step after M minutes since the last save "
                        "(0: off)")
    p.add_argument("--keep-checkpoints", type=_non_negative, default=3, metavar="K",
                   help="keep the newest K complete checkpoints under --save (0: keep all; the "
                        "one 'latest' names is never deleted)")
    p.add_argument("--load", metavar="DIR", default=None,
                   help="resume from DIR's 'latest' checkpoint, verified (else the newest "
                        "complete one); 'auto': the same in --save, or a new run when nothing "
                        "was saved there yet (one command that is safe to requeue)")
    p.add_argument("--override-raptr-schedule", action="store_true",
                   help="resume although the checkpoint was trained under another schedule")
    p.add_argument("--seed", type=_non_negative, default=1234,
                   help="model init, data order, masking, dropout, and the subnetwork sampler "
                        "unless raptr.seed is set")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate when the config has no optimizer block")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout probability in [0, 1)")
    p.add_argument("--activation-checkpointing", choices=["none", "torch", "deepspeed"],
                   default="none", help="recompute each block in backward: torch's "
                   "checkpointing, or DeepSpeed's (its \"activation_checkpointing\" block)")
    p.add_argument("--kernels", choices=["eager", "fused", "compiled", "auto"], default=None,
                   help="kernels of the blocks and the optimizer; overrides the raptr block's "
                        "\"kernels\" (default: the config's, else eager)")
    p.add_argument("--pipeline-stages", type=_non_negative, default=0, metavar="N",
                   help="train as a DeepSpeed pipeline of N stages (ZeRO 0/1; 0: no pipeline)")
    p.add_argument("--summary", metavar="FILE", default=None, help="JSON written at the end")
    p.add_argument("--local_rank", "--local-rank", type=int,
                   default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    return p


@dataclasses.dataclass(frozen=True)
class TrainFlags:
    """The flags of one ``megaraptr-train`` run, as parsed (defaults live in the parser)."""

    deepspeed_config: str
    deepspeed: bool
    model: str
    size: str
    objective: str
    ul2_s_share: Optional[float]
    data: Optional[Tuple[str, ...]]
    """--data: the paths in the order given (None: the built-in sample)."""
    tokenizer: Optional[str]
    vocab_size: int
    seq_len: int
    """--seq-len, or the size's default (:data:`DEFAULT_SEQ_LEN`)."""
    train_steps: int
    exit_at_step: Optional[int]
    log_interval: Optional[int]
    """--log-interval; None: by whether stdout is a terminal (tools/train_log.py)."""
    eval_interval: int
    eval_sequences: int
    extra_eval: Tuple[Tuple[str, str], ...]
    """--extra-eval: (NAME, DIR) per held-out set evaluated beside val
    (:mod:`megaraptr.tools.extra_eval`)."""
    save: Optional[str]
    save_interval: int
    save_every_minutes: float
    keep_checkpoints: int
    """--keep-checkpoints: complete checkpoints kept under --save (0: all)."""
    load: Optional[str]
    """--load DIR, or "auto" (:func:`megaraptr.tools.resume_check.find`)."""
    override_raptr_schedule: bool
    seed: int
    """--seed: model initialization, data order and dropout (the sampler's seed is the raptr
    block's when it sets one: :attr:`megaraptr.tools.preflight.RunPlan.sampler_seed`)."""
    lr: float
    dropout: float
    activation_checkpointing: str
    kernels: Optional[str]
    pipeline_stages: int
    summary: Optional[str]
    local_rank: int


def parse_args(argv: Optional[List[str]] = None) -> TrainFlags:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout: must be in [0, 1), got {args.dropout}")
    seq_len = args.seq_len if args.seq_len is not None else DEFAULT_SEQ_LEN[args.size]
    data = tuple(args.data) if args.data is not None else None
    return TrainFlags(**dict(vars(args), seq_len=seq_len, data=data,
                             extra_eval=tuple(args.extra_eval)))
