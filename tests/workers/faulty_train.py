"""``megaraptr.train`` with a failing disk on one rank (run by tests/e2e/test_checkpoint_faults.py).

    torchrun --nproc_per_node 2 tests/workers/faulty_train.py RANK PATTERN -- <megaraptr-train flags>

On global rank ``RANK``, ``torch.save`` to a path containing ``PATTERN`` writes the first half
of the file and raises ``OSError(ENOSPC)``, as a full disk does mid-file; everything else is
the real command (``megaraptr.tools.train.main``), unchanged.
"""
from __future__ import annotations

import errno
import io
import os
import sys

import torch

from megaraptr.tools.train import main


def fail_writes(pattern: str) -> None:
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and pattern in os.fspath(f):
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(f))
        return real(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    rank, pattern, sep, *flags = sys.argv[1:]
    assert sep == "--", sys.argv
    if os.environ.get("RANK", "0") == rank:
        fail_writes(pattern)
    sys.exit(main(flags))
