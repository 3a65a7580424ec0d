"""Errors megaraptr raises on purpose, each with a one-line message for the user.

The command-line entry points catch ``MegaraptrError`` and print ``str(err)`` alone (exit code
2 for bad input, 1 for a failure during training); library callers get the exception.
"""


class MegaraptrError(Exception):
    """Base class: a problem megaraptr detected and can describe in one line."""

    exit_code = 1


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
    """A checkpoint could not be written completely (disk full, an I/O error, non-finite
    weights): nothing of it is left behind, and the previous checkpoint and ``latest`` are as
    they were. Exit code 74 (sysexits' EX_IOERR), distinct from bad input (2)."""

    exit_code = 74

    def __init__(self, message: str, *, collective: bool = False):
        super().__init__(message)
        self.collective = collective
        """Raised with the same line on every rank (the command prints it on rank 0 only)."""
