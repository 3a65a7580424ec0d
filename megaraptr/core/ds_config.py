"""The DeepSpeed JSON file around the "raptr" block: reading it with one-line errors, a
misspelt block key refused (DeepSpeed would drop the block silently), and the LR warmup note."""
from __future__ import annotations

import json
import os
from typing import Optional, Union

from megaraptr.core.config import BLOCK_KEY
from megaraptr.errors import ConfigError


def load_ds_config(config: Union[str, os.PathLike, dict]) -> dict:
    """Read a DeepSpeed JSON config from a path (or copy a dict), with one-line errors."""
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    path = os.fspath(config)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise ConfigError("deepspeed_config", f"cannot read {path}: {err.strerror}") from None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("deepspeed_config",
                          f"{path} is not valid JSON: {err.msg} at line {err.lineno} "
                          f"column {err.colno}") from None
    if not isinstance(loaded, dict):
        raise ConfigError("deepspeed_config", f"{path} must hold a JSON object")
    return loaded


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def check_block_key(ds_config: dict) -> None:
    """Refuse a top-level key that is a misspelt "raptr" (DeepSpeed ignores unknown keys, so
    ``"raptor": {...}`` would silently train the full model).

    Raises:
        ConfigError: naming the key.
    """
    for key in ds_config:
        if isinstance(key, str) and key != BLOCK_KEY and _edit_distance(key.lower(), BLOCK_KEY) <= 2:
            raise ConfigError(key, 'unknown top-level key; did you mean "raptr"? DeepSpeed '
                              "ignores unknown keys, so this block would be dropped silently")


def scheduler_warmup_note(ds_config: dict, total_steps: int) -> Optional[str]:
    """A warning when the ds_config's LR scheduler warms up for the whole run (or longer)."""
    params = (ds_config.get("scheduler") or {}).get("params") or {}
    warmup = params.get("warmup_num_steps")
    if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= total_steps:
        return (f"warning: scheduler.params.warmup_num_steps {warmup} is not below the run's "
                f"{total_steps} steps: the learning rate warms up for the whole run and never "
                "reaches its peak or decays")
    return None
