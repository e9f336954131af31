"""The study's worker processes (study/workers.py): shares of the cores, the jobs handed
out in order, failures, stop signals, and the same records as runs one after another in
this process."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

from ebm_vs_score import settings, study
from ebm_vs_score.errors import ConfigError
from ebm_vs_score.study import workers

TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPU cores")


def _square_on(x: int) -> tuple[int, int, tuple[int, ...]]:
    """A job: its answer, its worker's pid and the cores that worker may use."""
    time.sleep(0.2)
    return x * x, os.getpid(), tuple(sorted(os.sched_getaffinity(0)))


def _die_on_three_and_five(x: int) -> int:
    """Jobs 3 and 5 end their worker at once, before it can answer."""
    if x == 3:
        os._exit(3)
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def _raise_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("job two failed")
    time.sleep(0.5)
    return x


def _wait_for_stop(job: tuple[str, int]) -> str:
    """Marks its start in a file, then runs until the worker's stop flag is set (as the
    train loop does); 'saved'."""
    from ebm_vs_score import checkpoints

    directory, x = job
    open(os.path.join(directory, f"started_{x}"), "w").close()
    # The other worker may take a minute to spawn and import on a loaded 2-core box (CI, the
    # other xdist process busy): wait for the signal well past that, not for a fixed minute.
    deadline = time.monotonic() + 600
    while not checkpoints.sigterm_received() and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"saved {x}" if checkpoints.sigterm_received() else "never stopped"


def _sigterm_once_two_started(directory: str) -> None:
    deadline = time.monotonic() + 600
    while len(os.listdir(directory)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


def _log_lines(x: int) -> int:
    """A job that logs as a library (INFO, and a warning) and as absl does."""
    import logging as pylogging

    from absl import logging

    pylogging.getLogger("orbax").info("library info line %d", x)
    logging.warning("library warning line %d", x)
    return x


def _died(x: int, why: str) -> str:
    return f"{x}: {why}"


def test_core_shares_are_disjoint_near_equal_and_cover_the_cores():
    assert workers.core_shares([0, 1, 2, 3, 4], 2) == [{0, 1, 2}, {3, 4}]
    assert workers.core_shares([4, 6], 2) == [{4}, {6}]
    assert workers.core_shares(list(range(7)), 3) == [{0, 1, 2}, {3, 4}, {5, 6}]


def test_worker_count_auto_explicit_and_refused():
    cpus = len(os.sched_getaffinity(0))
    assert workers.count(0, 100) == cpus  # this test runs on the CPU backend
    assert workers.count(0, 1) == 1 and workers.count(0, 0) == 1
    assert workers.count(1, 100) == 1
    for bad, words in ((-1, "must be 0"), (cpus + 1, f"choose at most {cpus}")):
        with pytest.raises(ConfigError, match=words):
            workers.count(bad, 10)


@TWO_CORES
def test_jobs_run_pinned_to_one_core_each_in_order():
    answers = workers.run_all(_square_on, [1, 2, 3, 4, 5], 2, _died)
    assert [a[0] for a in answers] == [1, 4, 9, 16, 25]
    cores = {pid: set(c) for _, pid, c in answers}  # two workers on two cores: one each
    assert all(len(c) == 1 for c in cores.values()) and os.getpid() not in cores
    assert len(set().union(*cores.values())) == len(cores)  # no core shared


@TWO_CORES
def test_a_dead_worker_fails_its_job_and_the_others_go_on():
    # Each death comes right after its job started; a dead worker's place is taken.
    answers = workers.run_all(_die_on_three_and_five, [1, 2, 3, 4, 5, 6, 7], 2, _died)
    assert answers == [1, 2, "3: its worker process exited with status 3", 4,
                       "5: its worker process was killed by SIGKILL", 6, 7]


@TWO_CORES
def test_a_raising_job_stops_the_study_after_the_running_jobs():
    with pytest.raises(ValueError, match="job two failed"):
        workers.run_all(_raise_on_two, [1, 2, 3, 4, 5, 6, 7, 8], 2, _died)


@TWO_CORES
def test_sigterm_reaches_the_workers_which_save_and_start_nothing_more(tmp_path):
    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    threading.Thread(target=_sigterm_once_two_started, args=(str(tmp_path),),
                     daemon=True).start()
    try:
        answers = workers.run_all(_wait_for_stop, [(str(tmp_path), x) for x in range(4)], 2,
                                  _died)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert answers == ["saved 0", "saved 1", None, None]


def test_workers_log_in_absl_format_without_library_info(capfd):
    assert workers.run_all(_log_lines, [7], 1, _died) == [7]
    err = capfd.readouterr().err
    assert re.search(r"^W\d{4} .*library warning line 7$", err, re.MULTILINE), err
    assert "library info line" not in err and "INFO:absl" not in err
    assert "Logging before flag parsing" not in err


def test_negative_workers_in_a_study_config_is_one_sentence():
    config = study.get_config("toy")
    config.study.workers = -2
    with pytest.raises(ConfigError, match=r"study.workers=-2 must be 0"):
        study.check_section(config)


def _done_results(study_dir: str) -> dict[str, dict]:
    runs = os.path.join(study_dir, "runs")
    out = {}
    for name in sorted(os.listdir(runs)):
        with open(os.path.join(runs, name, "DONE.json")) as f:
            results = json.load(f)["results"]
        out[name] = {k: v for k, v in results.items()
                     if isinstance(v, float) and not k.endswith("wall_s")}
    return out


@TWO_CORES
def test_two_workers_give_the_records_of_runs_one_after_another(tmp_path):
    """The same runs (U, two seeds) with study.workers=1 and 2: the same metrics."""
    from test_study import _tiny_toy, _toy_study_config

    records = {}
    for count in (1, 2):
        config = _tiny_toy(_toy_study_config(seeds=(0, 1)))
        config.study.families = ("score",)
        config.study.workers = count
        study.run_study(settings.from_config(config), str(tmp_path / str(count)))
        records[count] = _done_results(str(tmp_path / str(count)))
    assert records[1].keys() == records[2].keys() == {"score_seed0", "score_seed1"}
    for name, metrics in records[1].items():
        assert metrics.keys() == records[2][name].keys()
        for key, value in metrics.items():
            assert records[2][name][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_workers_take_the_longest_expected_runs_first(tmp_path):
    """Energy Matching and EqM-E first, the C-ResNet last but its width-40 variant early;
    seeds of one variant together, in the study's order."""
    from ebm_vs_score.study import plan
    from ebm_vs_score.study import run as study_run

    s = settings.from_config(study.get_config("digits"))
    runs = [(v, seed) for v in plan.variants(s) for seed in (0, 1)]
    order = [plan.run_name(*job) for job in study_run._longest_first(s, runs, str(tmp_path))]
    assert order[:2] == ["energy_matching_seed0", "energy_matching_seed1"]
    assert order[-2:] == ["resnet_energy_seed0", "resnet_energy_seed1"]
    assert order.index("resnet_energy_ch40_seed0") < order.index("eqm_seed0")
    assert order.index("energy_seed0") < order.index("resnet_energy_ch40_seed0")
    assert sorted(order) == sorted(plan.run_name(*job) for job in runs)
    assert plan.expected_cost("a_family_not_measured_yet") == max(
        plan.expected_cost(v) for v in plan.variants(s))


class _ClosedPipe:
    def send(self, item):
        raise BrokenPipeError("the worker is gone")


def test_a_run_sent_to_a_worker_that_just_died_waits_for_the_next_worker():
    """A worker that asked for a run and died before it arrived did not take it: the run
    stays first in line and is not charged to that worker."""
    pending, current = workers.collections.deque([4, 5]), {}
    pool = workers._Pool(None, _died)
    with pytest.raises(OSError):
        workers._give_next(pool, _ClosedPipe(), pending, list(range(6)), current)
    assert list(pending) == [4, 5] and current == {}
