"""Checks of where a ``megaraptr-train`` run will write, made before anything is built.

- ``--summary FILE``: refused up front in one line when it names a folder, or a file that
  could not be written (its folder, or the nearest existing folder above it, is not writable;
  a file is in the way), instead of failing after the whole run.
- The TensorBoard (and csv monitor) ``job_name``, the folder DeepSpeed writes under
  ``output_path``: a name the config gives must be one plain folder name (no path separator,
  no ``..``); the name megaraptr derives (``{model}-{size}-{method}-seed{S}-{run id}``, where
  an ``hf:PATH`` model contributes the type from its config.json) is made safe instead
  (:func:`safe_job_name`). The run id (:func:`new_run_id`, the UTC time of the run's first
  start) travels in its checkpoints, so a resumed run writes on in its own folder.
"""
from __future__ import annotations

import os
import re
import time

from megaraptr.errors import ConfigError

MONITORS = ("tensorboard", "csv_monitor")
"""DeepSpeed monitor blocks that write under ``output_path/job_name``."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def check_summary_path(path: str) -> None:
    """Refuse a --summary path that names a folder or cannot be written.

    Raises:
        ConfigError: naming --summary, the path and what is wrong.
    """
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ConfigError("--summary", f"{path} is a folder; give a file, such as "
                          f"{os.path.join(path, 'summary.json')}")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ConfigError("--summary", f"{path} exists and is not writable")
        return
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # made at the end: the nearest existing one must allow it
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError("--summary", f"{path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError("--summary", f"{path}: the folder {folder} is not writable")


def check_job_name(block: str, name) -> None:
    """Refuse a config's monitor ``job_name`` that is not one plain folder name.

    Raises:
        ConfigError: naming ``<block>.job_name`` and what is allowed.
    """
    bad = not isinstance(name, str) or not name or "/" in name or "\\" in name or \
        ".." in name or "\0" in name or name == "." or (os.altsep and os.altsep in name)
    if bad:
        raise ConfigError(f"{block}.job_name", f"{name!r} is not one folder name; allowed: a "
                          "name without '/', '\\' or '..' (it is a folder under output_path)")


def safe_job_name(name: str) -> str:
    """A derived job name as one safe folder name: characters other than letters, digits and
    ``._+=-`` become ``_``, and so does every ``..``."""
    name = _UNSAFE.sub("_", name)
    while ".." in name:
        name = name.replace("..", "_")
    return name if name not in ("", ".") else "_"


RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}")
"""What a run id looks like (one read from a checkpoint is used only if it does)."""


def new_run_id() -> str:
    """A new run's id: the UTC time of its first start, to the second (e.g. 20261130-041502)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())
