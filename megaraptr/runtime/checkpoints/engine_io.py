"""megaraptr's hold on a DeepSpeed engine's checkpoint I/O (compat patch ``checkpoint_io``).

DeepSpeed 0.19.8 reads every checkpoint file of a ZeRO or pipeline run through its
``TorchCheckpointEngine.load``, which calls ``torch.load(weights_only=False)``: a tampered
file runs code. :func:`install` replaces that ``load`` on the engine's checkpoint engine with
:func:`megaraptr.runtime.checkpoints.safe_load.load`. There is no fallback to the unsafe
read: if DeepSpeed's sources differ from 0.19.8's, or the engine uses another checkpoint
engine (``"checkpoint": {"writer"}``, DataStates), megaraptr stops with one line.

It also wraps the writes of a save (the checkpoint engine's ``save`` and ``makedirs``, and
the recovery-script copy) so that, while :mod:`megaraptr.runtime.checkpoints.store` runs a
save, a failing write (disk full, I/O error) is recorded in the rank's :class:`WriteLog`
instead of raised: every rank then finishes DeepSpeed's save and its barriers, and the store
decides together what happened. Outside a store save the wrappers change nothing.
"""
from __future__ import annotations

import functools
import os
from typing import List, Optional

from megaraptr.errors import ConfigError
from megaraptr.runtime import compat
from megaraptr.runtime.checkpoints import safe_load


class WriteLog:
    """The writes of the save in progress on this rank."""

    def __init__(self):
        self.active = False
        self.written: List[str] = []
        self.failure: Optional[str] = None
        """The first failed write: "<path>: <error>" (None: every write succeeded)."""

    def start(self) -> None:
        self.active, self.written, self.failure = True, [], None

    def stop(self) -> Optional[str]:
        """End the save; returns its first failure (None if there was none)."""
        self.active = False
        return self.failure

    def record(self, what: str, err: BaseException) -> None:
        if self.failure is None:
            if isinstance(err, OSError) and err.strerror:
                text = f"{err.strerror} (errno {err.errno})"
            else:
                text = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            self.failure = f"writing {os.path.basename(what)}: {text}"

    def guard(self, write, *, path_arg: int = 0):
        """``write`` that, during a save, records its exception instead of raising it."""

        @functools.wraps(write)
        def guarded(*args, **kwargs):
            if not self.active:
                return write(*args, **kwargs)
            what = kwargs.get("path", args[path_arg] if len(args) > path_arg else "?")
            try:
                result = write(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 (torch reports ENOSPC as RuntimeError)
                self.record(str(what), err)
                return None
            self.written.append(str(what))
            return result
        return guarded


def _load(path, map_location=None):
    return safe_load.load(path, map_location=map_location)


def install(ds_engine, patches: Optional[dict]) -> WriteLog:
    """Route ``ds_engine``'s checkpoint reads through the safe loader and guard its writes.

    Raises:
        DeepSpeedCompatError: DeepSpeed's checkpoint code differs from 0.19.8's.
        ConfigError: the config selects a checkpoint engine other than DeepSpeed's default.
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    compat.require(patches, "checkpoint_io")
    engine = ds_engine.checkpoint_engine
    if type(engine) is not TorchCheckpointEngine:
        raise ConfigError("checkpoint", f"DeepSpeed's {type(engine).__name__} is not supported: "
                          "megaraptr reads and verifies checkpoints through DeepSpeed's default "
                          'TorchCheckpointEngine; remove "checkpoint": {"writer"} and '
                          '"datastates" from the config')
    if ds_engine.load_universal_checkpoint():
        raise ConfigError("checkpoint.load_universal", "not supported: its loader reads files "
                          "with torch.load(weights_only=False) outside the checkpoint engine "
                          "(docs/reliability.md)")
    log = WriteLog()
    engine.load = _load
    engine.save = log.guard(engine.save, path_arg=1)  # save(state_dict, path)
    engine.makedirs = log.guard(engine.makedirs)
    ds_engine._copy_recovery_script = log.guard(ds_engine._copy_recovery_script)
    return log
