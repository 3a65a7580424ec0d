"""One writer per run folder: the lock a training run holds on its ``--save`` folder.

``<save_dir>/.megaraptr.lock`` is created with ``O_EXCL`` by global rank 0 before anything is
built, holds JSON (host, pid, the process's start time, the host's boot id, the launch's
rendezvous address and scheduler job id) and is removed when the run ends.

A second run given the same folder finds it and refuses in one line naming the holder. A lock
whose holder is gone is taken over with a warning line: on the same host, when that process
no longer exists (or its pid now belongs to a younger process, or the host has rebooted); on
another host, only when it is an earlier attempt of the same scheduler job (``SLURM_JOB_ID``,
torchrun's ``--rdzv-id``): a requeued job resumes, anything else on another host is left to
the user to remove. The other ranks of a run only look (:func:`check`): a lock of their own
launch (same rendezvous address) is their rank 0's; a live one of another launch stops them too.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Optional

from megaraptr.errors import CheckpointError

NAME = ".megaraptr.lock"


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), or None."""
    text = _read_text(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split()[19] if text else None


def _job() -> Optional[str]:
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    return None if job in (None, "", "none") else job


def _rendezvous() -> Optional[str]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"


def identity() -> dict:
    """This process as a lock holder."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()),
            "boot_id": _read_text("/proc/sys/kernel/random/boot_id"), "job": _job(),
            "rendezvous": _rendezvous(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gone(holder: dict, me: dict) -> Optional[str]:
    """Why ``holder`` no longer holds its lock, or None if it may (live, or unknowable)."""
    if holder.get("host") == me["host"]:
        if holder.get("boot_id") and me["boot_id"] and holder["boot_id"] != me["boot_id"]:
            return "the host has restarted since"
        pid = holder.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return f"process {pid} is gone"
        if holder.get("proc_start") and _proc_start(pid) != holder["proc_start"]:
            return f"process {pid} is gone (its pid now belongs to another process)"
        return None
    if holder.get("job") and holder["job"] == me["job"]:
        return f"it is an earlier attempt of job {me['job']}"
    return None


def _describe(holder: dict) -> str:
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started "
            f"{holder.get('started')}")


def _busy(save_dir: str, path: str, holder: dict) -> CheckpointError:
    return CheckpointError(
        f"--save {save_dir}: in use by another run ({_describe(holder)}); one run writes a "
        f"folder at a time: wait for it to end or give another --save (if no run uses it, "
        f"remove {path})")


def _holder(path: str) -> Optional[dict]:
    """The lock's content (None: no lock); a lock being written is read again."""
    for attempt in range(20):
        text = _read_text(path)
        if text is None and not os.path.exists(path):
            return None
        try:
            holder = json.loads(text or "")
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        time.sleep(0.05)
    return {"host": "?", "pid": "?", "started": "? (unreadable lock file)"}


class RunLock:
    """The lock on a run folder, held by this process until :meth:`release`."""

    def __init__(self, path: str, me: dict, note: Optional[str] = None):
        self.path, self.me = path, me
        self.note = note
        """A warning line when a stale lock was taken over."""

    @classmethod
    def acquire(cls, save_dir: str) -> "RunLock":
        """Take the lock on ``save_dir`` (made if missing).

        Raises:
            CheckpointError: another live run holds it, or the folder cannot be written.
        """
        path, me = os.path.join(save_dir, NAME), identity()
        text = json.dumps(me)
        try:
            os.makedirs(save_dir, exist_ok=True)
            for _ in range(3):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    holder = _holder(path)
                    if holder is None:
                        continue  # released meanwhile: try again
                    why = gone(holder, me)
                    if why is None:
                        raise _busy(save_dir, path, holder) from None
                    if _take_over(path, holder, text):
                        return cls(path, me, f"took over the lock on {save_dir} from a run "
                                             f"that has ended ({_describe(holder)}: {why})")
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                return cls(path, me)
        except OSError as err:
            raise CheckpointError(f"--save {save_dir}: cannot take its lock ({type(err).__name__}"
                                  f": {err.strerror or err})") from None
        raise _busy(save_dir, path, _holder(path) or {})

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        holder = _holder(self.path) if os.path.exists(self.path) else None
        if holder is not None and holder.get("pid") == self.me["pid"] and \
                holder.get("host") == self.me["host"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _take_over(path: str, holder: dict, text: str) -> bool:
    """Replace a stale lock by ours, serialized with any other taker on this host (flock on
    the folder); False if the lock changed meanwhile."""
    import fcntl

    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if _holder(path) != holder:
            return False
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    finally:
        os.close(folder)  # releases the flock


def check(save_dir: str) -> None:
    """For ranks other than 0: stop if a live run of another launch holds ``save_dir``."""
    path, me = os.path.join(save_dir, NAME), identity()
    holder = _holder(path) if os.path.exists(path) else None
    if holder is None or (me["rendezvous"] and holder.get("rendezvous") == me["rendezvous"]):
        return
    if gone(holder, me) is None:
        raise _busy(save_dir, path, holder)
