"""Reading checkpoint files without running code from them.

A ``.pt`` file is a pickle: unpickled with ``torch.load(weights_only=False)`` (DeepSpeed's
default), it can call any importable function, so a tampered checkpoint runs code when it is
resumed. megaraptr reads every checkpoint file with ``weights_only=True`` instead: tensors,
plain containers and numbers, plus exactly the DeepSpeed classes its checkpoints hold
(:data:`ALLOWED`). Found by saving real checkpoints under ZeRO 0/1/2/3 (fp32 and bf16, 1 and
2 processes) and 2-stage pipelines (ZeRO 0/1) with DeepSpeed 0.19.8 and listing their pickles'
globals; fp16 adds the dynamic loss scaler ZeRO saves (``CreateLossScaler``). Everything else
torch's own allow-list admits (``OrderedDict``, ``torch.Size``, storages, dtypes).

A file that names any other global is refused in one line naming the file and the global;
it is never resumed from (no fallback: a tampered folder is not a corrupt one).
"""
from __future__ import annotations

import functools
import importlib
import pickle
import re
import zipfile
from typing import Tuple

from megaraptr.errors import CheckpointError

ALLOWED: Tuple[str, ...] = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",  # ZeRO 1-3 optimizer state (fp32, bf16)
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",  # the same under fp16
    "deepspeed.runtime.zero.config.ZeroStageEnum",  # ZeRO 1-3 optimizer state
    "deepspeed.utils.tensor_fragment.fragment_address",  # ZeRO-1/2 and bf16 param_slice_mappings
)
"""The classes besides torch's own weights-only set that DeepSpeed 0.19.8's checkpoints hold."""

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@functools.lru_cache(maxsize=None)
def allowed_classes() -> tuple:
    """The :data:`ALLOWED` classes, imported, and ``getattr``: some Python 3.11 releases (3.11.2
    among them) pickle an enum member as ``getattr(ZeroStageEnum, "gradients")``. The
    weights-only unpickler calls only allow-listed callables, so what getattr fetches can be
    kept but never called."""
    classes = [getattr]
    for name in ALLOWED:
        module, _, attr = name.rpartition(".")
        classes.append(getattr(importlib.import_module(module), attr))
    return tuple(classes)


def load(path: str, *, map_location="cpu", mmap: bool = False):
    """``torch.load`` of a checkpoint file that cannot run code.

    Args:
        map_location: as for ``torch.load`` (DeepSpeed passes a device or a function).
        mmap: map tensor data lazily (zip-format files only; others are read whole).

    Raises:
        CheckpointError: one line: the file names a global outside the allow-list (it is
            refused), or it cannot be read (truncated, not a checkpoint).
    """
    import torch

    if mmap and not zipfile.is_zipfile(path):
        mmap = False  # torch maps only its zip format; the legacy format is read whole
    try:
        with torch.serialization.safe_globals(list(allowed_classes())):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        if found is None and "Weights only load failed" not in str(err):
            raise CheckpointError(f"{path}: cannot be read (UnpicklingError: "
                                  f"{_first_line(err)})") from None
        what = f"calls {found.group(1)}" if found else "holds an object outside the allow-list"
        raise CheckpointError(
            f"{path}: refused: its pickle {what}, which is neither a tensor, a plain container "
            "nor one of DeepSpeed's checkpoint classes (loading it could run code); resume only "
            "from checkpoints a trusted run wrote") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: "
                              f"{_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"
