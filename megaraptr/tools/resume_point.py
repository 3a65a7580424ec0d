"""Which checkpoint a ``megaraptr-train`` run resumes from: ``--load DIR`` or ``--load auto``.

``--load auto`` makes one fixed command safe to requeue: it resumes from ``--save``'s newest
complete checkpoint when there is one and starts fresh otherwise (a job that died before its
first save, or the first submission). :func:`newest_checkpoint` is the one place that decides
what "newest complete" means; today it follows the folder's ``latest`` file as DeepSpeed does
(:func:`megaraptr.runtime.resume_state.find_checkpoint`) and checks that megaraptr's state is
readable there. A checkpoint manifest check replaces its body without changing a caller.
"""
from __future__ import annotations

import os
from typing import Optional

from megaraptr.errors import ConfigError
from megaraptr.runtime.resume_state import find_checkpoint, read_raptr_state
from megaraptr.tools.train_args import TrainFlags

AUTO = "auto"
"""``--load auto``: --save's newest complete checkpoint, else a fresh start."""


def newest_checkpoint(save_dir: str) -> Optional[str]:
    """The folder of ``save_dir``'s newest complete checkpoint, or None when it holds none.

    Raises:
        CheckpointError: ``save_dir`` names a checkpoint that cannot be read.
    """
    if not os.path.isfile(os.path.join(save_dir, "latest")):
        return None  # nothing saved yet (or no such folder): a fresh start
    path = find_checkpoint(save_dir)
    read_raptr_state(path)  # raises in one line when its model states are missing or unreadable
    return path


def resume_point(flags: TrainFlags) -> Optional[str]:
    """The checkpoint folder the run resumes from (None: a fresh start), checked up front.

    Raises:
        ConfigError: ``--load auto`` without ``--save``.
        CheckpointError: ``--load DIR`` holds no checkpoint.
    """
    if flags.load is None:
        return None
    if flags.load == AUTO:
        if not flags.save:
            raise ConfigError("--load", "auto resumes from the newest checkpoint under --save; "
                              "give --save DIR (or --load DIR)")
        return newest_checkpoint(flags.save)
    return find_checkpoint(flags.load)
