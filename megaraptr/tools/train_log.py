"""Plain log lines for batch jobs, and DeepSpeed's known-harmless warnings kept out of them.

When stdout is not a terminal (a SLURM log, ``nohup``, a pipe), a progress bar only smears
carriage returns into the file: ``megaraptr-train`` then prints one plain line every N steps
(:func:`resolve_log_interval`; ``--log-interval`` sets N, on a terminal too) and one per
evaluation. :func:`hide_known_warnings` drops the DeepSpeed warnings listed in
:data:`KNOWN_HARMLESS`, each with why it is harmless; every other warning is kept.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

KNOWN_HARMLESS = {
    r"Attempting to get learning rate from scheduler before it has started":
        "DeepSpeed's engine asks its LR scheduler for the LR while it is built, before the "
        "first step; training reads it after each step",
    r"total_num_steps \d+ is less than warmup_num_steps \d+":
        "megaraptr's own note says the same of the run's warmup, with what it means",
}
"""DeepSpeed warning (a regular expression) -> why it is harmless for a megaraptr run."""


class _KnownHarmless(logging.Filter):
    def __init__(self):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in KNOWN_HARMLESS))
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and self.pattern.search(record.getMessage()):
            self.hidden += 1
            return False
        return True


def hide_known_warnings() -> str:
    """Install the filter on DeepSpeed's logger; returns the note that says so."""
    from deepspeed.utils import logger  # DeepSpeed's one logger, "DeepSpeed"

    if not any(isinstance(f, _KnownHarmless) for f in logger.filters):
        logger.addFilter(_KnownHarmless())
    return (f"{len(KNOWN_HARMLESS)} known-harmless DeepSpeed warnings are hidden (why: "
            "megaraptr/tools/train_log.py); every other warning is shown")


def resolve_log_interval(given: Optional[int], train_steps: int, tty: bool) -> int:
    """Steps between plain log lines: ``given`` (--log-interval) when set; otherwise none on
    a terminal (the progress bar) and, in a file or pipe, about ten lines for a short run and
    one every 100 steps for a long one."""
    if given is not None:
        return given
    return 0 if tty else max(1, min(100, train_steps // 10))


def step_line(done: int, total: int, *, loss: float, lr: float, layers: int, tokens_per_s: float,
              seconds_per_step: float, dropped: bool = False) -> str:
    """One plain line: step, loss, LR, active layers, tokens/s and the time left at this pace."""
    eta = max(total - done, 0) * seconds_per_step
    hours, rest = divmod(int(round(eta)), 3600)
    return (f"megaraptr: step {done}/{total}: loss {loss:.4f}, lr {lr:.3g}, {layers} layers, "
            f"{tokens_per_s:,.0f} tokens/s, ETA {hours}:{rest // 60:02d}:{rest % 60:02d}"
            f"{', update dropped (diverged)' if dropped else ''}")
