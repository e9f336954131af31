"""The program's own error types: bad input that ``main`` reports in one sentence.

Every error a user can cause (a config value, a missing file, a workdir, a run that
diverged) is a :class:`UserError`; ``main`` prints its message on one line and exits 1,
while any other exception is a bug and keeps its traceback. Each subclass also derives
from the builtin type callers caught before (``ValueError``, ``FileNotFoundError``, ...),
so existing ``except`` clauses keep working.
"""

from __future__ import annotations

# Exit status of a run stopped by SIGTERM after saving its checkpoint: EX_TEMPFAIL from
# sysexits.h ("temporary failure, try again"). The launchers requeue on it; 0 means the
# run finished and 1 that it failed (rerunning the same command will not help).
PREEMPTED_EXIT_STATUS = 75


class UserError(Exception):
    """Bad input; the message is one sentence that says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value is invalid; the message says which and how to fix it."""


class WorkdirError(UserError):
    """The workdir cannot be used (a file, not writable, no run there, another config)."""


class DataError(UserError, FileNotFoundError):
    """The data the config names cannot be found."""


class CheckpointError(UserError, FileNotFoundError):
    """No checkpoint (or none that loads) where one is needed."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: the loss or its gradient became non-finite."""
