"""Plain log lines for batch jobs (interval, ETA), the known-harmless DeepSpeed warnings hidden
with the rest kept, the run id of TensorBoard folders, and --help's defaults."""
from __future__ import annotations

import logging
import re

import pytest

from megaraptr.tools.output_checks import RUN_ID, new_run_id
from megaraptr.tools.train_args import build_parser
from megaraptr.tools.train_log import (KNOWN_HARMLESS, hide_known_warnings, resolve_log_interval,
                                       step_line)


@pytest.mark.parametrize("given, steps, tty, expected", [
    (None, 100_000, True, 0), (None, 100_000, False, 100), (None, 12, False, 1),
    (None, 300, False, 30), (None, 5, False, 1), (7, 300, True, 7), (0, 300, False, 0)])
def test_log_interval_by_terminal_unless_given(given, steps, tty, expected):
    assert resolve_log_interval(given, steps, tty) == expected


def test_step_line_has_the_eta_at_the_session_pace():
    line = step_line(100, 1000, loss=3.25, lr=2e-4, layers=9, tokens_per_s=12345.6,
                     seconds_per_step=4.5)
    assert line == ("megaraptr: step 100/1000: loss 3.2500, lr 0.0002, 9 layers, "
                    "12,346 tokens/s, ETA 1:07:30")
    assert step_line(3, 3, loss=1, lr=1, layers=1, tokens_per_s=1,
                     seconds_per_step=9).endswith("ETA 0:00:00")


def test_known_harmless_warnings_are_hidden_and_the_rest_kept():
    from deepspeed.utils import logger

    note = hide_known_warnings()
    assert note.startswith(f"{len(KNOWN_HARMLESS)} known-harmless DeepSpeed warnings")
    hide_known_warnings()  # idempotent: one filter
    assert sum(type(f).__name__ == "_KnownHarmless" for f in logger.filters) == 1
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("Attempting to get learning rate from scheduler before it has started")
        logger.warning("total_num_steps 12 is less than warmup_num_steps 30")
        logger.warning("total_num_steps looks odd")  # not a known one: kept
        logger.error("Attempting to get learning rate from scheduler before it has started")
    finally:
        logger.removeHandler(handler)
    assert seen == ["total_num_steps looks odd",
                    "Attempting to get learning rate from scheduler before it has started"]


def test_run_ids_are_utc_seconds():
    assert RUN_ID.fullmatch(new_run_id())
    assert not RUN_ID.fullmatch("../../x") and not RUN_ID.fullmatch("20261130-0415")


def test_help_names_the_defaults():
    options = build_parser().format_help().split("options:")[1]
    entries = {e.split()[0].rstrip(","): " ".join(e.split())  # one entry per flag
               for e in re.split(r"\n  (?=-)", options) if e.strip()}
    for flag, default in [("--size", "tiny"), ("--vocab-size", "8192"), ("--seed", "1234"),
                          ("--eval-sequences", "64"), ("--model", "bert"), ("--lr", "0.001")]:
        assert f"(default: {default})" in entries[flag], entries[flag]
    assert "default 1000" in entries["--save-interval"]  # said in its own words: not twice
    assert "(default" not in entries["--save-interval"] + entries["--data"]
