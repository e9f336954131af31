"""The study's runs in worker processes, each pinned to its own share of the CPU cores.

A digits run is too small to keep two cores busy: its training step reaches 30 steps/s on
two cores and 22-23 on one (BENCHMARKS.md, "The study's cost"), and start-up, compilation
and the sample grids run mostly on one core. So on the CPU the study trains and evaluates
``study.workers`` runs at once, one process per share of the cores (``0``: one per core,
at most one per run), each given the next unfinished run by this process when it asks for
one (the study lists the longest expected first: ``study.run._longest_first``). ``1`` runs
them one after another in this process, as on GPU and TPU, where the runs share one
accelerator and a second process would only wait for it, and with several JAX processes,
which run each run together.

A worker is started with ``multiprocessing``'s *spawn* method (a fresh interpreter: JAX's
backend is never forked) and inherits this process's environment, ``XLA_FLAGS`` included.
It pins itself to its cores before JAX starts its backend, so XLA:CPU sizes its thread
pools to them. Its own signal handling is this process's: a Ctrl-C or SIGTERM reaches the
workers (SIGTERM is forwarded), each saves its run's current step, and the study stops
with the one sentence of an interrupted run. A worker that dies (killed, out of memory)
fails its run in one sentence, a new worker on its cores takes its place, and the other
runs go on. Each worker talks to this process over its own pipe only (no queue or lock
is shared between workers, so a worker killed at any moment cannot block the others), and
a message on a pipe is written before ``send`` returns: this process knows a dead worker's
run even when it died at once.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing import connection
from typing import Any

import jax
from absl import flags, logging

from ebm_vs_score import checkpoints, library_reports
from ebm_vs_score.errors import ConfigError

AUTO = 0  # study.workers=0: one worker per CPU core this process may use


def available_cpus() -> list[int]:
    """The CPU cores this process may run on (its affinity), sorted."""
    return sorted(os.sched_getaffinity(0))


def count(requested: int, num_runs: int) -> int:
    """How many worker processes run the study's ``num_runs`` unfinished runs.

    Raises:
      ConfigError: ``requested`` is negative, above the usable cores, or above 1 where the
        runs cannot use separate processes (an accelerator backend, several JAX processes).
    """
    cpus = len(available_cpus())
    if requested < 0:
        raise ConfigError(f"study.workers={requested} must be 0 (one worker per CPU core), 1 "
                          "(the runs one after another in this process) or a number of "
                          "worker processes")
    if requested > 1 and (jax.default_backend() != "cpu" or jax.process_count() > 1):
        raise ConfigError(f"study.workers={requested} runs worker processes on the CPU only, "
                          f"but this study runs on {jax.default_backend()} with "
                          f"{jax.process_count()} process(es); use --config.study.workers=1")
    if requested > cpus:
        raise ConfigError(f"study.workers={requested} exceeds the {cpus} CPU cores this "
                          f"process may use; choose at most {cpus}, or 0 for one per core")
    if requested == AUTO:
        parallel = jax.default_backend() == "cpu" and jax.process_count() == 1
        requested = cpus if parallel else 1
    return max(1, min(requested, num_runs))


def core_shares(cpus: Sequence[int], workers: int) -> list[set[int]]:
    """``cpus`` split into ``workers`` disjoint shares of near-equal size, in order."""
    size, extra = divmod(len(cpus), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        shares.append(set(cpus[start:end]))
        start = end
    return shares


def _worker(job: Callable[[Any], Any], cores: set[int], verbosity: int, pipe) -> None:
    """A worker's life: pin to ``cores``, log as the parent does, then ask for a job on
    ``pipe`` and run it, until the parent answers None or a stop signal came.

    ``pipe`` is this worker's own connection to the parent: a message on it is written
    before ``send`` returns, so nothing is lost when the worker dies right after (a
    ``multiprocessing.Queue`` sends from a feeder thread, which a dying process may never
    run), and no lock is shared with the other workers."""
    os.sched_setaffinity(0, cores)
    _log_as_main(verbosity)
    checkpoints.catch_stop_signals(save=True)
    while True:
        pipe.send(("ready", None, None))
        if (item := pipe.recv()) is None:
            return
        index, payload = item
        try:
            pipe.send(("done", index, job(payload)))
        except BaseException as e:  # noqa: BLE001 - the parent raises it; this worker stops
            pipe.send(("stop", index, e if isinstance(e, Exception) else
                       RuntimeError(f"{type(e).__name__} in a study worker")))
            return
        if checkpoints.sigterm_received():
            return


def _log_as_main(verbosity: int) -> None:
    """The parent's log format and filter in a spawned worker: absl's handler (``app.run``
    installs it in ``main``; here no flags are parsed, so they are marked parsed with their
    defaults), the parent's verbosity, and libraries' INFO lines kept off stderr."""
    flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(verbosity)
    library_reports.quiet_library_info()


def run_all(job: Callable[[Any], Any], payloads: Sequence[Any], workers: int,
            died: Callable[[Any, str], Any]) -> list[Any | None]:
    """``job(payload)`` for every payload, in ``workers`` pinned processes; results in
    payload order, None for a job a stop left unstarted.

    ``job`` must be picklable (a module-level function or a partial of one). A job that
    raises stops its worker and, once the running jobs have ended, is raised here (the
    first one, in payload order). ``died(payload, why)`` gives the result of a job whose
    worker exited before answering; a new worker on the same cores takes its place.
    """
    context = multiprocessing.get_context("spawn")
    pool = _Pool(context, job)
    with _forwarding_sigterm(pool):
        for cores in core_shares(available_cpus(), workers):
            pool.start(cores)
        outcome = _collect(pool, payloads, died)
    stops = [outcome[i] for i in sorted(outcome) if isinstance(outcome[i], BaseException)]
    if stops:
        raise stops[0]
    return [outcome.get(i) for i in range(len(payloads))]


class _Pool:
    """The live worker processes, each with its cores and its own pipe."""

    def __init__(self, context, job: Callable[[Any], Any]):
        self.context, self.job = context, job
        self.halted = False  # a job raised: no worker takes another job
        self.stopping = False  # a stop signal came: no new job, a dead worker not replaced
        self.by_pipe: dict[Any, tuple[Any, set[int]]] = {}

    @property
    def processes(self) -> list[Any]:
        return [process for process, _ in self.by_pipe.values()]

    def start(self, cores: set[int]) -> None:
        mine, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=_worker, args=(self.job, cores, logging.get_verbosity(), theirs),
            name=f"study worker on cores {sorted(cores)}", daemon=True)
        process.start()
        theirs.close()  # the worker holds the only other end: its exit ends the pipe
        self.by_pipe[mine] = (process, cores)


def _collect(pool: _Pool, payloads, died) -> dict[int, Any]:
    """Jobs to the workers that ask, in order, and their answers, until every worker has
    exited; a job never given out has no entry."""
    outcome: dict[int, Any] = {}
    pending = collections.deque(range(len(payloads)))
    current: dict[Any, int] = {}  # pipe -> the job its worker was given last
    while pool.by_pipe:
        for pipe in connection.wait(list(pool.by_pipe)):
            try:
                kind, index, value = pipe.recv()
                if kind == "ready":
                    _give_next(pool, pipe, pending, payloads, current)
                    continue
            except (EOFError, OSError):  # the worker has exited
                _worker_ended(pool, pipe, current.get(pipe), outcome, payloads, died)
                continue
            if kind == "stop":
                pool.halted = True
            outcome[index] = value
    return outcome


def _give_next(pool: _Pool, pipe, pending, payloads, current: dict[Any, int]) -> None:
    """The next job to the worker on ``pipe``, or None (stop) when none is left or the
    study stops; a job sent is that worker's from then on, even if it dies at once."""
    if not pending or pool.halted or pool.stopping:
        pipe.send(None)
        return
    index = pending.popleft()
    try:
        pipe.send((index, payloads[index]))
    except OSError:  # the worker died after asking: the job waits for another one
        pending.appendleft(index)
        raise
    current[pipe] = index


def _worker_ended(pool: _Pool, pipe, index: int | None, outcome: dict[int, Any], payloads,
                  died) -> None:
    """A worker that exited on a job it never answered fails that job (``died``), and a
    new worker on the same cores takes its place in the queue, unless the study stops."""
    process, cores = pool.by_pipe.pop(pipe)
    pipe.close()
    process.join()
    if index is None or index in outcome:
        return
    outcome[index] = died(payloads[index], _exit_words(process.exitcode))
    if not pool.halted and not pool.stopping:
        pool.start(cores)


def _exit_words(exitcode: int) -> str:
    if exitcode < 0:
        return f"its worker process was killed by {signal.Signals(-exitcode).name}"
    return f"its worker process exited with status {exitcode}"


class _forwarding_sigterm:
    """While the workers run: SIGTERM to this process goes to its own handler (the stop
    flag) and on to the workers (Ctrl-C reaches them from the terminal), and this process
    keeps waiting for their answers: each saves its run's current step."""

    def __init__(self, pool: _Pool):
        self.pool = pool
        self.previous = None

    def _forward(self, signum, frame) -> None:
        self.pool.stopping = True
        if callable(self.previous):
            self.previous(signum, frame)
        for process in self.pool.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)
