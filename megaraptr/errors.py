"""Errors megaraptr raises on purpose, each with a one-line message for the user.

The command-line entry points catch ``MegaraptrError`` and print ``str(err)`` alone; library
callers get the exception. Exit codes (``exit_code``; docs/reliability.md has the table):

- 1: a failure during training (the base class, :class:`RankMismatchError`);
- 2: bad input, found before expensive work (:class:`ConfigError`, :class:`DataError`,
  :class:`CheckpointError`, :class:`DeepSpeedCompatError`);
- 3: the run diverged (:class:`DivergenceError`); nothing non-finite is saved;
- 74: a checkpoint could not be written completely (:class:`CheckpointWriteError`);
- 75: the run stopped early with its checkpoint saved (:class:`RunStopped`): requeue it.
"""


class MegaraptrError(Exception):
    """Base class: a problem megaraptr detected and can describe in one line."""

    exit_code = 1
    every_rank = False
    """True when every rank raises the same error at the same point (an agreed stop): the
    command line prints it on rank 0 only."""


class ConfigError(MegaraptrError, ValueError):
    """A bad setting: names the key path (``raptr.schedule[2].keep_prob``) and what is allowed."""

    exit_code = 2

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class DataError(MegaraptrError):
    """Missing, unreadable or malformed training data."""

    exit_code = 2


class RankMismatchError(MegaraptrError):
    """Ranks disagree on the subnetwork of a step (different seeds or configs)."""


class CheckpointError(MegaraptrError):
    """A checkpoint cannot be resumed as asked (missing, or made under another schedule)."""

    exit_code = 2


class DeepSpeedCompatError(MegaraptrError):
    """The installed DeepSpeed differs, in code megaraptr cannot run safely without, from the
    release megaraptr supports (megaraptr.runtime.compat); raised before training starts."""

    exit_code = 2


class EngineUsageError(MegaraptrError, AttributeError):
    """A DeepSpeed engine call that megaraptr's engine refuses because it would bypass the
    step's subnetwork (``engine.step()``, ``engine.backward(loss)``, ...): names the call to
    use instead. An ``AttributeError``, so ``hasattr(engine, "step")`` is False."""


class CheckpointWriteError(MegaraptrError):
    """A checkpoint could not be written completely (disk full, an I/O error): raised on every
    rank with the same line; nothing of it is left behind, and the previous checkpoint and
    ``latest`` are as they were. Exit code 74 (EX_IOERR of sysexits.h), distinct from bad input
    (2). Non-finite weights are a :class:`DivergenceError` instead (exit 3)."""

    exit_code = 74
    every_rank = True


class RunWarning(UserWarning):
    """A setting that will run, but probably not as meant (e.g. an LR warmup as long as the
    run); the command line prints it among the run's notes instead."""


class DivergenceError(MegaraptrError):
    """Training diverged (``raptr.on_nonfinite``): a step's loss or gradient norm was not
    finite, or the weights about to be saved were not. Raised on every rank after the same
    step and before anything is saved from it, so the newest checkpoint (and ``latest``) stays
    the last good one. Exit code 3."""

    exit_code = 3
    every_rank = True


class RunStopped(MegaraptrError):
    """The run stopped early, on every rank after the same step: SIGTERM or SIGUSR1 (what SLURM
    sends before preemption or the time limit), or its launcher died. The checkpoint of that
    step was saved when ``--save`` is given; the same command with ``--load auto`` continues.
    Exit code 75 (EX_TEMPFAIL of sysexits.h: try again), for a launcher to requeue on."""

    exit_code = 75
    every_rank = True
