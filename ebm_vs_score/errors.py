"""The program's own error types: bad input that ``main`` reports in one sentence.

Every error a user can cause (a config value, a missing file, a workdir, a run that
diverged, a full disk) is a :class:`UserError`; ``main`` prints its message on one line and
exits 1, while any other exception is a bug and keeps its traceback. Each subclass also
derives from the builtin type callers caught before (``ValueError``, ``FileNotFoundError``,
...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import errno
import re

# Exit status of a run stopped by SIGTERM after saving its checkpoint: EX_TEMPFAIL from
# sysexits.h ("temporary failure, try again"). The launchers requeue on it; 0 means the
# run finished and 1 that it failed (rerunning the same command will not help).
PREEMPTED_EXIT_STATUS = 75
# Exit status of a run stopped by Ctrl-C (SIGINT): 128 + 2, the shell's convention. A
# training run saves its current step first, like a preempted one.
INTERRUPTED_EXIT_STATUS = 130


class UserError(Exception):
    """Bad input; the message is one sentence that says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value is invalid; the message says which and how to fix it."""


class WorkdirError(UserError):
    """The workdir cannot be used (a file, not writable, no run there, another config,
    a damaged file in it, another run holding it)."""


class WorkdirBusyError(WorkdirError):
    """Another run holds the workdir's lock (nothing of that workdir is touched)."""


class DataError(UserError, FileNotFoundError):
    """The data the config names cannot be found."""


class CheckpointError(UserError, FileNotFoundError):
    """No checkpoint (or none that loads) where one is needed."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: the loss or its gradient became non-finite."""


class DiskFullError(UserError, OSError):
    """A write failed with ENOSPC; the message names the directory and the space needed."""


# Fragments of library reprs that say nothing to a user (a pybind11 bound method that
# TensorStore puts where its details should be, object addresses): cut from the first line
# of a library error, with the phrase that introduces them, before it is shown.
_REPR_NOISE = re.compile(r"(\s*See full TensorStore details:)?\s*<(bound method|function|"
                         r"built-in method|[\w.]+ object at)\b.*$")


def first_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` of a library error, without repr noise."""
    text = [line for line in str(error).strip().splitlines() if line.strip()]
    if not text:
        return type(error).__name__
    line = " ".join(_REPR_NOISE.sub("", text[0]).split()).rstrip(" :")
    return f"{type(error).__name__}: {line[:limit]}"


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) is a write that found no space.

    Python raises ``OSError(ENOSPC)`` (or EDQUOT, a full quota); TensorStore (Orbax) and
    TensorFlow report it as text ("No space left on device", ``os_error_code='28'``).
    """
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or f"os_error_code='{errno.ENOSPC}'" in text:
            return True
        if "Disk quota exceeded" in text:
            return True
    return False


def format_bytes(num: float) -> str:
    """``num`` bytes in the largest binary unit that keeps it >= 1 (``1.5 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} PiB"  # not reached
