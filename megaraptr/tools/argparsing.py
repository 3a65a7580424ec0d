"""Argument parsing shared by megaraptr's commands: one-line errors and list arguments.

:class:`OneLineParser` turns argparse's usage-and-exit into a :class:`ConfigError`, which each
command's ``main`` prints as one line and turns into exit status 2, the same as every other bad
input. :func:`int_list` parses "0,-1" style arguments.
"""
from __future__ import annotations

import argparse
from typing import List

from megaraptr.errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise ``ConfigError("arguments", message)``."""

    def error(self, message: str):
        raise ConfigError("arguments", message)


def int_list(text: str) -> List[int]:
    """Integers joined by commas ("0,-1")."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers joined by commas, got {text!r}")
