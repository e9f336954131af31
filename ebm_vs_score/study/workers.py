"""The study's runs in worker processes, each pinned to its own share of the CPU cores.

A digits run is too small to keep two cores busy: its training step reaches 30 steps/s on
two cores and 22-23 on one (BENCHMARKS.md, "The study's cost"), and start-up, compilation
and the sample grids run mostly on one core. So on the CPU the study trains and evaluates
``study.workers`` runs at once, one process per share of the cores (``0``: one per core,
at most one per run), each taking the next unfinished run from a shared queue. ``1`` runs
them one after another in this process, as on GPU and TPU, where the runs share one
accelerator and a second process would only wait for it, and with several JAX processes,
which run each run together.

A worker is started with ``multiprocessing``'s *spawn* method (a fresh interpreter: JAX's
backend is never forked) and inherits this process's environment, ``XLA_FLAGS`` included.
It pins itself to its cores before JAX starts its backend, so XLA:CPU sizes its thread
pools to them. Its own signal handling is this process's: a Ctrl-C or SIGTERM reaches the
workers (SIGTERM is forwarded), each saves its run's current step, and the study stops
with the one sentence of an interrupted run. A worker that dies (killed, out of memory)
fails its run in one sentence; the other runs go on.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Sequence
from typing import Any

import jax
from absl import flags, logging

from ebm_vs_score import checkpoints, library_reports
from ebm_vs_score.errors import ConfigError

AUTO = 0  # study.workers=0: one worker per CPU core this process may use
_POLL_S = 1.0  # how often the parent looks for workers that died


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


def _worker(job: Callable[[Any], Any], cores: set[int], verbosity: int, tasks, results,
            halt) -> None:
    """A worker's life: pin to ``cores``, log as the parent does, then run queued jobs
    until a None arrives, the parent halts the study or a stop signal came."""
    os.sched_setaffinity(0, cores)
    _log_as_main(verbosity)
    checkpoints.catch_stop_signals(save=True)
    while not halt.is_set() and (item := tasks.get()) is not None:
        index, payload = item
        results.put(("start", index, os.getpid()))
        try:
            results.put(("done", index, job(payload)))
        except BaseException as e:  # noqa: BLE001 - the parent raises it; this worker stops
            results.put(("stop", index, e if isinstance(e, Exception) else
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
    worker exited before answering.
    """
    context = multiprocessing.get_context("spawn")
    tasks, results, halt = context.Queue(), context.Queue(), context.Event()
    for index, payload in enumerate(payloads):
        tasks.put((index, payload))
    processes = [context.Process(target=_worker, args=(job, share, logging.get_verbosity(), tasks,
                                                         results, halt),
                                 name=f"study worker {i}", daemon=True)
                 for i, share in enumerate(core_shares(available_cpus(), workers))]
    for _ in processes:
        tasks.put(None)
    with _forwarding_sigterm(processes):
        for process in processes:
            process.start()
        outcome = _collect(processes, results, payloads, died, halt)
    for process in processes:
        process.join()
    tasks.cancel_join_thread()  # jobs a stop left in the queue
    stops = [outcome[i] for i in sorted(outcome) if isinstance(outcome[i], BaseException)]
    if stops:
        raise stops[0]
    return [outcome.get(i) for i in range(len(payloads))]


def _collect(processes, results, payloads, died, halt) -> dict[int, Any]:
    """Answers from the workers until every one has exited; a dead worker's job fails."""
    running: dict[int, int] = {}  # pid -> index of its job
    outcome: dict[int, Any] = {}
    while True:
        try:
            kind, index, value = results.get(timeout=_POLL_S)
        except queue.Empty:
            if all(not p.is_alive() for p in processes) and results.empty():
                break
            _fail_dead(processes, running, outcome, payloads, died)
            continue
        if kind == "start":
            running[value] = index
        else:
            if kind == "stop":  # the study stops: no worker takes another job
                halt.set()
            running = {pid: i for pid, i in running.items() if i != index}
            outcome[index] = value
    _fail_dead(processes, running, outcome, payloads, died)
    return outcome


def _fail_dead(processes, running, outcome, payloads, died) -> None:
    for process in processes:
        index = running.get(process.pid)
        if process.exitcode is not None and index is not None and index not in outcome:
            outcome[index] = died(payloads[index], _exit_words(process.exitcode))
            del running[process.pid]


def _exit_words(exitcode: int) -> str:
    if exitcode < 0:
        return f"its worker process was killed by {signal.Signals(-exitcode).name}"
    return f"its worker process exited with status {exitcode}"


class _forwarding_sigterm:
    """While the workers run: SIGTERM to this process goes to its own handler (the stop
    flag) and on to the workers (Ctrl-C reaches them from the terminal), and this process
    keeps waiting for their answers: each saves its run's current step."""

    def __init__(self, processes):
        self.processes = processes
        self.previous = None

    def _forward(self, signum, frame) -> None:
        if callable(self.previous):
            self.previous(signum, frame)
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)
