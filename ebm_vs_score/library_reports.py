"""Orbax's and TensorStore's own reports of a failed save or restore, kept off the console.

A failed checkpoint save or restore is reported once, in one sentence
(``checkpoints.Checkpointer``, docs/DESIGN.md); the libraries underneath report the same
failure many times, from several threads, some after the sentence: Orbax's ERROR records
(one per I/O thread, with tracebacks), asyncio's "Task exception was never retrieved",
concurrent.futures' "exception calling callback", unraisable exceptions of Orbax's
coroutines, and TensorStore's completion callbacks on Orbax's closed event loop. This
module routes each of those: collected for error.log while a save runs, dropped after.
Every other report reaches the console as before.
"""

from __future__ import annotations

import contextlib
import io
import logging as pylogging
import os
import sys
import threading
import traceback

from absl import logging


class _Collect(pylogging.Filter):
    """Keeps Orbax's ERROR records (with their tracebacks) out of the console."""

    def __init__(self, reports: list[str]):
        super().__init__()
        self.reports = reports

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.levelno >= pylogging.ERROR and "/orbax/" in record.pathname:
            self.reports.append(pylogging.Formatter().format(record) + "\n")
            return False
        return True


def _console_handlers() -> set[pylogging.Handler]:
    """The handlers that print log records: the root logger's and absl's."""
    return set(pylogging.getLogger().handlers) | {logging.get_absl_handler()}


def mute_late_orbax_errors() -> None:
    """After a save failed (and was reported once): Orbax's other I/O threads, still
    writing, log the same failure later, often after the one-sentence error (e.g.
    "_SignalingThread.run() raised an exception: RESOURCE_EXHAUSTED"); those records are
    dropped from the console from now on."""
    handlers = _console_handlers()
    for handler in handlers:
        if not any(isinstance(f, _Collect) for f in handler.filters):
            handler.addFilter(_Collect([]))


class _LateLibraryReport(pylogging.Filter):
    """Drops what Orbax's asynchronous I/O reports after a save or restore has already
    failed (and been reported in one sentence): asyncio's "Task exception was never
    retrieved" for Orbax's tasks, garbage-collected later (often at exit), and
    concurrent.futures' "exception calling callback" once the event loop is closed."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        text = record.getMessage()
        if "never retrieved" in text and "orbax" in text:
            return False
        return not ("exception calling callback" in text and _loop_closed(record.exc_info))


def _loop_closed(exc_info) -> bool:
    error = exc_info[1] if isinstance(exc_info, tuple) else None
    return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


def _from_orbax(unraisable) -> bool:
    """Whether an unraisable exception comes from Orbax's code (e.g. a read coroutine of a
    corrupt checkpoint closed after the restore failed: "Exception ignored in: ...")."""
    code = getattr(unraisable.object, "cr_code", None) or getattr(unraisable.object, "gi_code",
                                                                  None)
    files = [code.co_filename] if code is not None else []
    files += [f.filename for f in traceback.extract_tb(unraisable.exc_traceback)]
    return any(f"{os.sep}orbax{os.sep}" in name for name in files)


def _from_native_callback_on_closed_loop(unraisable) -> bool:
    """TensorStore's writes of a failed save completing after Orbax closed its event loop:
    each completion calls loop.call_soon_threadsafe from C++, which raises "Event loop is
    closed", reported with PyErr_WriteUnraisable(NULL) (no object, no message: a bare
    traceback of asyncio frames only, one per write)."""
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return (unraisable.object is None and bool(frames)
            and frames[0].name == "call_soon_threadsafe"
            and all(f"{os.sep}asyncio{os.sep}" in frame.filename for frame in frames)
            and _loop_closed((None, unraisable.exc_value, None)))


def quiet_orbax_unraisable(previous):
    def hook(unraisable) -> None:
        if not (_from_orbax(unraisable) or _from_native_callback_on_closed_loop(unraisable)):
            previous(unraisable)

    hook._ebm_quiet = True
    return hook


def silence_late_library_reports() -> None:
    """After a failed save or restore: Orbax's late reports of the same failure stay off the
    console (loggers ``asyncio`` and ``concurrent.futures``, unraisable exceptions of its
    coroutines and of TensorStore's completion callbacks, and the "Event loop is closed" of
    its I/O threads at exit)."""
    for name in ("asyncio", "concurrent.futures"):
        logger = pylogging.getLogger(name)
        if not any(isinstance(f, _LateLibraryReport) for f in logger.filters):
            logger.addFilter(_LateLibraryReport())
    if not getattr(sys.unraisablehook, "_ebm_quiet", False):
        sys.unraisablehook = quiet_orbax_unraisable(sys.unraisablehook)
    if getattr(threading.excepthook, "_ebm_quiet", False):
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if not _loop_closed((args.exc_type, args.exc_value, args.exc_traceback)):
            previous(args)

    hook._ebm_quiet = True
    threading.excepthook = hook


@contextlib.contextmanager
def library_reports(reports: list[str]):
    """Collects what Orbax and TensorStore print while a save fails (each of their worker
    threads logs the same error with a traceback, and TensorStore's callbacks print to
    sys.stderr); the caller raises one exception for all of them and logs the reports."""
    collect = _Collect(reports)
    handlers = _console_handlers()
    for handler in handlers:
        handler.addFilter(collect)
    stderr, sys.stderr = sys.stderr, io.StringIO()
    try:
        yield
    finally:
        captured, sys.stderr = sys.stderr.getvalue(), stderr
        if captured:
            reports.append(captured)
        for handler in handlers:
            handler.removeFilter(collect)


def _is_ours_or_loud(record: pylogging.LogRecord) -> bool:
    """This program's own log lines, and every library's warnings and errors."""
    return (record.levelno >= pylogging.WARNING
            or f"{os.sep}ebm_vs_score{os.sep}" in record.pathname)


def quiet_library_info() -> None:
    """Keeps libraries' INFO lines (JAX's backend probing, Orbax's per-save lines,
    matplotlib's font cache) out of the log and off stderr; ``--verbosity=1`` shows them.
    ``main`` calls it first thing; so does each study worker (``study.workers``)."""
    if logging.get_verbosity() >= logging.DEBUG:
        return
    logging.get_absl_handler().addFilter(_is_ours_or_loud)
