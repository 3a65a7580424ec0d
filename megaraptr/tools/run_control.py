"""What may end a ``megaraptr-train`` session early or checkpoint it between two steps.

:class:`RunControl` is made first thing in a run, before the process group exists:

- SIGTERM and SIGUSR1 (what SLURM sends before preemption or the time limit; ``--signal``)
  only mark the request: the step under way finishes;
- :class:`LauncherWatch` notices that the launcher that started this worker (torchrun, the
  ``deepspeed`` launcher) has died: this worker's parent, or the ``deepspeed`` runner above
  DeepSpeed's per-node ``launch.py``, is no longer the parent it was (its children were
  re-parented to init or a subreaper). Read from /proc at most once a second; a plain
  ``python -m megaraptr.train`` (no launcher) is not watched, so ``nohup`` runs survive logout;
- ``--save-every-minutes M``: a save is due once M minutes have passed since the last one.

Each step the loop passes :meth:`RunControl.votes` to ``engine.train_step``, which sums them
over all ranks in the step's one all-reduce; :meth:`RunControl.stop_reason` and
:meth:`RunControl.save_due` read the sums. Ranks that receive a signal, or see their launcher
die, at different steps thus stop after the same step (the first step at which any of them
voted), save one complete checkpoint together, and exit with
:class:`megaraptr.errors.RunStopped`'s code 75. A checkpoint is only ever written by all ranks
together after such an agreement, never by some of them.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""The signals that stop a run after its current step, with a checkpoint."""
STOP, ORPHANED, SAVE_DUE = range(3)
"""Indices of the votes each step carries."""


def _parent_of(pid: int) -> Optional[int]:
    """The parent pid of ``pid`` (None: no such process; -1: unknown on this system)."""
    if pid == os.getpid():
        return os.getppid()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    return int(stat[stat.rindex(b")") + 2:].split()[1])  # after "pid (comm) state"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LauncherWatch:
    """The launcher processes above this worker, and whether one of them has died.

    Args:
        links: (process, its parent when the run started) pairs to check: this process and
            its launcher, and DeepSpeed's ``launch.py`` and the runner above it.
        interval: seconds between two looks.
    """

    def __init__(self, links: Sequence[Tuple[int, int]], *, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.links = list(links)
        self.interval, self._clock = interval, clock
        self._next = 0.0
        self.dead: Optional[int] = None
        """The pid of the launcher found dead (None while all live)."""

    @classmethod
    def of_this_process(cls) -> "LauncherWatch":
        """Watch this worker's launcher; nothing when no launcher started it (call before the
        process group is set up: a plain process gets RANK then)."""
        parent = os.getppid()
        if "RANK" not in os.environ or parent <= 1:
            return cls([])
        links = [(os.getpid(), parent)]
        if "deepspeed.launcher.launch" in _cmdline(parent):  # DeepSpeed's per-node launcher
            runner = _parent_of(parent)
            if runner is not None and runner > 1:
                links.append((parent, runner))
        return cls(links)

    def died(self) -> bool:
        """Whether a watched launcher has died (looks at most once per ``interval``)."""
        now = self._clock()
        if self.dead is not None or not self.links or now < self._next:
            return self.dead is not None
        self._next = now + self.interval
        for child, parent in self.links:
            current = _parent_of(child)
            if current != parent and current != -1:
                self.dead = parent
                break
        return self.dead is not None


class RunControl:
    """Signals, the launcher's health and the save clock of one session, as per-step votes.

    Args:
        save_every_minutes: a save is due when this many minutes have passed since the last
            (0: never).
        clock: seconds, monotonic (tests pass their own).
        launcher: the launcher watch (default: this process's, :meth:`LauncherWatch.
            of_this_process`).
    """

    def __init__(self, *, save_every_minutes: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 launcher: Optional[LauncherWatch] = None):
        self.received: Optional[int] = None
        """The first stop signal this process received."""
        self.launcher = launcher if launcher is not None else LauncherWatch.of_this_process()
        self.save_seconds = 60.0 * save_every_minutes
        self._clock = clock
        self._last_save = clock()
        main = threading.current_thread() is threading.main_thread()  # where Python allows it
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS} \
            if main else {}

    def _on_signal(self, signum, frame) -> None:  # runs between two bytecodes: only mark it
        if self.received is None:
            self.received = signum

    def close(self) -> None:
        """Give the signals back their handlers from before (call once the process is done)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def votes(self) -> List[float]:
        """This rank's votes for the next step: [stop signal, launcher dead, save due]."""
        due = self.save_seconds > 0 and self._clock() - self._last_save >= self.save_seconds
        return [float(self.received is not None), float(self.launcher.died()), float(due)]

    def saved(self) -> None:
        """A checkpoint was just written: the save clock starts again."""
        self._last_save = self._clock()

    def stop_reason(self, votes: Sequence[float]) -> Optional[str]:
        """Why the run stops after this step (from the votes summed over the ranks), or None."""
        if not votes:
            return None
        if votes[STOP]:
            if self.received is None:
                return f"a stop signal on {int(votes[STOP])} other rank(s)"
            others = int(votes[STOP]) - 1
            return signal.Signals(self.received).name + \
                (f" (and on {others} other rank(s))" if others else "")
        if votes[ORPHANED]:
            if self.launcher.dead is None:
                return "the death of another rank's launcher"
            return f"the death of the launcher (pid {self.launcher.dead})"
        return None

    @staticmethod
    def save_due(votes: Sequence[float]) -> bool:
        """Whether --save-every-minutes asks for a save after this step (on any rank)."""
        return bool(votes) and votes[SAVE_DUE] > 0
