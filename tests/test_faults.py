"""Fault injection (DESIGN.md rule 6): SIGTERM, Ctrl-C (SIGINT) and SIGKILL at random
moments, a second run on the same workdir, a full disk, broken and partial checkpoint
directories. Each case ends bit-identical to an uninterrupted run, or with the documented
one-line message; nothing is deleted.

The default run holds one SIGTERM and one Ctrl-C trial right after a periodic save (the
moment that used to save a step twice), a double Ctrl-C, two runs on one workdir, the full
disk (a real 8 MiB tmpfs where this process may mount one, else skipped; the in-process
injection of ENOSPC always runs) and the checkpoint cases; ``-m slow`` runs 10 SIGTERM and
10 Ctrl-C trials at random moments (before the first checkpoint, during saves, right after
them), and CI runs the first 3 SIGTERM trials with ``-m "slow and analytic"``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _cli import advice_followed, assert_untouched, error_line, own_lines, snapshot, tally

from ebm_vs_score import checkpoints, config_base, errors, runlock, settings, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITERS, EVERY = 120, 20
ARGS = ["--config=configs/toy_score.py", "--config.model.hidden=(32,32)",
        "--config.training.batch_size=64", "--config.training.log_every=5",
        f"--config.training.checkpoint_every={EVERY}", f"--config.training.n_iters={N_ITERS}",
        "--config.training.sample_every=100000", "--config.sampling.num_steps=5",
        "--config.sampling.num_samples=16"]


def _config():
    config = config_base.get_config("toy", "score")
    config.model.hidden = (32, 32)
    config.training.batch_size = 64
    config.training.n_iters = N_ITERS
    return config


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=REPO)


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "ebm_vs_score.main", f"--workdir={workdir}", *ARGS, *extra]


def _run(workdir, *extra):
    return subprocess.run(_cmd(workdir, *extra), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=900)


def _steps(workdir) -> list[int]:
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _state(workdir, step=None):
    s = settings.from_config(_config())
    model = train.builders.build_model(s)
    template = train.init_state(model, train.make_optimizer(s.optim), 0)
    ckpt = checkpoints.Checkpointer(workdir)
    try:
        return ckpt.restore(template, step)
    finally:
        ckpt.close()


def _assert_same(a, b):
    assert int(a.step) == int(b.step)
    for x, y in zip(jax.tree.leaves((a.params, a.ema_params, a.opt_state)),
                    jax.tree.leaves((b.params, b.ema_params, b.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The final state of an uninterrupted run."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    out = _run(workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    return _state(workdir)


def _truncate_largest_file(step_dir) -> str:
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    return victim


def _sigterm_trial(workdir, rng, after_save: bool, last_target: int = N_ITERS - EVERY,
                   pause_at_save: bool = False) -> int:
    """Starts a run and SIGTERMs it at a random moment (``after_save``: within 0.5 s of
    the checkpoint of a random step up to ``last_target`` appearing); returns its status.

    ``pause_at_save``: SIGSTOP the run the moment that checkpoint is seen, then SIGTERM and
    SIGCONT it, for trials that must preempt: the remaining 80+ steps of this model take
    about 0.6 s, less than the random 0-0.5 s wait plus a loaded machine's poll latency."""
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    start, target = time.time(), int(rng.integers(1, last_target // EVERY + 1)) * EVERY
    delay = rng.uniform(2, 40)
    while proc.poll() is None:
        saved = _steps(workdir)
        if after_save and saved and saved[-1] >= target or not after_save and (
                time.time() - start > delay):
            if pause_at_save:
                proc.send_signal(signal.SIGSTOP)
            else:
                time.sleep(rng.uniform(0, 0.5))
            break
        time.sleep(0.01 if pause_at_save else 0.05)
    proc.send_signal(signal.SIGTERM)
    if pause_at_save:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    if proc.returncode == errors.PREEMPTED_EXIT_STATUS:
        assert "preempted at step" in err and "finished at step" not in err, err[-3000:]
    else:  # the signal came after the last step
        assert proc.returncode == 0 and _steps(workdir)[-1] == N_ITERS, err[-3000:]
    return proc.returncode


def _resume_to_end(workdir):
    out = _run(workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _steps(workdir)[-1] == N_ITERS


@pytest.mark.slow  # 50 s; the analytic SIGTERM trial and Ctrl-C's save stay in the default run
def test_sigterm_right_after_a_periodic_save_exits_preempted_and_resumes(tmp_path, reference):
    workdir = str(tmp_path / "run")
    status = _sigterm_trial(workdir, np.random.default_rng(), after_save=True,
                            last_target=2 * EVERY, pause_at_save=True)
    assert status == errors.PREEMPTED_EXIT_STATUS
    _resume_to_end(workdir)
    _assert_same(_state(workdir), reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", [  # CI (-m analytic) runs 1, a timed kill; -m slow all 10
    pytest.param(t, marks=[pytest.mark.analytic] if t < 1 else []) for t in range(10)])
def test_sigterm_at_random_moments_resumes_bit_identically(tmp_path, reference, trial):
    rng = np.random.default_rng(1000 + trial)
    workdir = str(tmp_path / "run")
    status = _sigterm_trial(workdir, rng, after_save=bool(trial % 2))
    assert status in (errors.PREEMPTED_EXIT_STATUS, 0)
    if status:
        _resume_to_end(workdir)
    _assert_same(_state(workdir), reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path, reference, trial):
    rng = np.random.default_rng(2000 + trial)
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = int(rng.integers(1, N_ITERS // EVERY)) * EVERY
    while proc.poll() is None and target not in _steps(workdir):
        time.sleep(0.01)  # SIGKILL as soon as possible after (or during) a save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _resume_to_end(workdir)
    _assert_same(_state(workdir), reference)


def test_corrupt_newest_checkpoint_falls_back_in_resume_and_eval(tmp_path, reference):
    """Resume and eval use the previous checkpoint, say so in one line, delete nothing; the
    resumed run still reaches the uninterrupted run's parameters bit for bit."""
    workdir = str(tmp_path / "run")
    out = _run(workdir, f"--config.training.n_iters={3 * EVERY}")
    assert out.returncode == 0, out.stderr[-3000:]
    newest = os.path.join(workdir, "checkpoints", str(3 * EVERY))
    victim = _truncate_largest_file(newest)
    evaluation = _run(workdir, f"--config.training.n_iters={3 * EVERY}", "--mode=sample")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    said = [line for line in evaluation.stderr.splitlines() if "cannot be loaded" in line]
    assert len(said) == 1 and f"using step {2 * EVERY} instead" in said[0]
    assert os.path.exists(victim) and "Traceback" not in evaluation.stderr
    assert "pybind11" not in evaluation.stderr and "<bound method" not in said[0]
    assert all(name.startswith(f"step_{2 * EVERY:08d}")
               for name in os.listdir(os.path.join(workdir, "sample")))
    resumed = _run(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = [line for line in resumed.stderr.splitlines() if "cannot be loaded" in line]
    assert len(said) == 1 and f"resuming from checkpoint at step {2 * EVERY}" in resumed.stderr
    moved = [line for line in resumed.stderr.splitlines() if "moved checkpoint" in line]
    assert len(moved) == 1 and f"moved checkpoint {3 * EVERY} to" in moved[0]
    assert "cannot be loaded" in open(os.path.join(workdir, "error.log")).read()
    (kept,) = os.listdir(os.path.join(workdir, checkpoints.BROKEN_DIR))
    assert kept.startswith(f"{3 * EVERY}_")  # moved aside, not deleted
    _assert_same(_state(workdir), reference)


def _tiny_state():
    s = settings.from_config(_config())
    model = train.builders.build_model(s)
    return train.init_state(model, train.make_optimizer(s.optim), 0)


def test_checkpointer_skips_partial_dirs_saves_once_and_reports_broken_steps(tmp_path):
    state = _tiny_state()
    ckpt = checkpoints.Checkpointer(str(tmp_path))
    for step in (10, 20):
        assert ckpt.save(step, state.replace(step=state.step + step))
    assert not ckpt.save(20, state)  # a step is saved once: no StepAlreadyExistsError
    partial = tmp_path / "checkpoints" / "30.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "junk").write_text("half-written")
    assert ckpt.all_steps() == [10, 20]
    _truncate_largest_file(tmp_path / "checkpoints" / "20")
    restored = ckpt.restore(state)
    assert int(restored.step) == 10
    assert (tmp_path / "checkpoints" / "20").is_dir()  # evaluation leaves it in place
    with pytest.raises(errors.CheckpointError, match="checkpoint 20 .* cannot be loaded"):
        ckpt.restore(state, 20)
    ckpt.close()
    log = (tmp_path / "error.log").read_text()
    assert "checkpoint 20" in log and "using step 10 instead" in log
    _truncate_largest_file(tmp_path / "checkpoints" / "10")
    ckpt = checkpoints.Checkpointer(str(tmp_path))
    with pytest.raises(errors.CheckpointError, match=r"none of the checkpoints \[10, 20\]"):
        ckpt.restore(state)
    ckpt.close()
    assert sorted(os.listdir(tmp_path / "checkpoints"))[:2] == ["10", "20"]


# ----------------------------------------------------------------------------------------
# Ctrl-C (SIGINT): like preemption, with status 130
# ----------------------------------------------------------------------------------------


def _last_logged_step(workdir) -> int:
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return max((json.loads(line)["step"] for line in f if line.endswith("\n")),
                       default=0)
    except (OSError, ValueError):
        return 0


def _ready_for(moment: str, workdir, target: int) -> bool:
    """Whether the run reached the ``moment`` of a Ctrl-C trial: 'startup' (the workdir is
    locked; imports done, the first step not yet logged), 'after_save' (the checkpoint of
    ``target`` or a later one is written), 'mid_training' (step ``target`` is logged)."""
    if moment == "startup":
        return os.path.exists(os.path.join(workdir, runlock.LOCK_FILE))
    if moment == "after_save":
        saved = _steps(workdir)
        return bool(saved) and saved[-1] >= target
    return _last_logged_step(workdir) >= target


def _sigint_trial(workdir, rng, moment: str, last_target: int = N_ITERS - EVERY) -> int:
    """``_sigterm_trial`` with Ctrl-C at a ``moment`` (see ``_ready_for``): status 130 and
    the step named in the last line saved (0 when no step had trained)."""
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if moment == "after_save":
        target = int(rng.integers(1, last_target // EVERY + 1)) * EVERY
    else:  # between two saves, on a log step
        target = int(rng.choice([s for s in range(5, last_target, 5) if s % EVERY]))
    while proc.poll() is None and not _ready_for(moment, workdir, target):
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.2) if moment == "after_save" else 0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    if proc.returncode == 0:  # the signal came after the last step
        assert _steps(workdir)[-1] == N_ITERS, err[-3000:]
        tally("sigint", status=0, step=N_ITERS)
        return 0
    assert proc.returncode == errors.INTERRUPTED_EXIT_STATUS, err[-3000:]
    assert sum("press Ctrl-C again" in line for line in err.splitlines()) == 1, err[-3000:]
    (step,) = [int(m) for m in re.findall(r"^interrupted at step (\d+):", err, re.M)]
    assert step == 0 or step in _steps(workdir), (step, _steps(workdir))  # saved, once
    tally("sigint", status=proc.returncode, step=step, saved=_steps(workdir))
    return proc.returncode


@pytest.mark.faults
@pytest.mark.fast
def test_ctrl_c_saves_the_step_exits_130_and_resumes_bit_identically(tmp_path, reference):
    workdir = str(tmp_path / "run")
    status = _sigint_trial(workdir, np.random.default_rng(), "after_save",
                           last_target=2 * EVERY)
    assert status == errors.INTERRUPTED_EXIT_STATUS
    _resume_to_end(workdir)  # the advice: rerun the same command
    _assert_same(_state(workdir), reference)
    advice_followed("ctrl-c: rerun the same command", True)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_ctrl_c_at_random_moments_resumes_bit_identically(tmp_path, reference, trial):
    """Ctrl-C during start-up (trials 0, 3, 6, 9), right after a periodic save (1, 4, 7)
    or between two saves (2, 5, 8): the step is saved once and the run resumes to the
    uninterrupted run's parameters bit for bit."""
    rng = np.random.default_rng(3000 + trial)
    workdir = str(tmp_path / "run")
    moment = ("startup", "after_save", "mid_training")[trial % 3]
    # the last targets leave 60 steps (half a second on an idle core or more) so that the
    # run cannot finish first
    status = _sigint_trial(workdir, rng, moment, last_target=N_ITERS - 3 * EVERY)
    assert status == errors.INTERRUPTED_EXIT_STATUS  # every trial stops before the end
    _resume_to_end(workdir)
    _assert_same(_state(workdir), reference)


@pytest.mark.faults
@pytest.mark.slow  # 33 s; one Ctrl-C's save and resume stays in the default run
def test_a_second_ctrl_c_exits_at_once_without_a_traceback(tmp_path, reference):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not _steps(workdir):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == errors.INTERRUPTED_EXIT_STATUS, err[-3000:]
    assert "Traceback" not in err and "interrupted again" in err, err[-3000:]
    _resume_to_end(workdir)
    _assert_same(_state(workdir), reference)


# ----------------------------------------------------------------------------------------
# Two runs on one workdir
# ----------------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.fast
def test_a_second_run_on_a_workdir_is_refused_naming_the_first(tmp_path, reference):
    """The first run is paused (SIGSTOP) while it holds the lock, so the second one surely
    meets it; the second run touches nothing. Its advice (stop the first) is followed with
    SIGKILL: the next run takes the stale lock over and ends bit-identical."""
    workdir = str(tmp_path / "run")
    first = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        while first.poll() is None and not _steps(workdir):
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        before = snapshot(workdir)
        line = error_line(_run(workdir))
        assert f"--workdir={workdir} is in use by another run" in line
        assert f"PID {first.pid}" in line and f"kill {first.pid}" in line, line
        assert_untouched(before, workdir)
        assert not os.path.exists(os.path.join(workdir, "error.log"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    _resume_to_end(workdir)
    _assert_same(_state(workdir), reference)
    assert not os.path.exists(os.path.join(workdir, runlock.LOCK_FILE))
    advice_followed("two runs: stop the first (kill PID)", True)


# ----------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------


def _mount_tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                         capture_output=True)
    return out.returncode == 0


def _fill(directory: str, leave: int) -> str:
    """Writes a file that leaves ``leave`` bytes free on the filesystem of ``directory``."""
    stat = os.statvfs(directory)
    filler = os.path.join(directory, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


@pytest.mark.faults
@pytest.mark.slow  # 37 s; ENOSPC in a save (below) stays in the default run
def test_a_full_disk_stops_in_one_sentence_keeping_every_checkpoint(tmp_path, reference):
    """A real full filesystem (an 8 MiB tmpfs, filled up to 64 KiB), not an injected
    error: the run stops at its next save in one sentence naming the workdir and the space
    to free; no Orbax temporary directory is left, every checkpoint and file already
    written is byte-identical (metrics.jsonl only gained whole lines). Freeing the space
    (the advice) lets the same command resume to the uninterrupted run's parameters."""
    disk = str(tmp_path / "disk")
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN); the in-process "
                    "ENOSPC test covers the save path")
    try:
        workdir = os.path.join(disk, "run")
        status = _sigterm_trial(workdir, np.random.default_rng(), after_save=True,
                                last_target=2 * EVERY, pause_at_save=True)
        assert status == errors.PREEMPTED_EXIT_STATUS
        newest = _steps(workdir)[-1]
        filler = _fill(disk, 64 * 1024)
        before = snapshot(workdir)
        line = error_line(_run(workdir), only_line=False)
        assert f"the disk of --workdir={workdir} is full" in line and "free at least" in line
        assert f"resume from step {newest}" in line, line
        assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints"))
                    if "tmp" in d]
        assert_untouched(before, workdir, append_only=("metrics.jsonl",))
        for record in open(os.path.join(workdir, "metrics.jsonl")):
            json.loads(record)
        os.remove(filler)  # the advice: free the space, rerun the same command
        _resume_to_end(workdir)
        _assert_same(_state(workdir), reference)
        advice_followed("full disk: free the space and rerun", True)
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)


def test_enospc_in_a_save_removes_the_partial_step_and_names_the_space(tmp_path,
                                                                         monkeypatch):
    """The save path with OSError(ENOSPC) injected where Orbax writes (after it created its
    temporary directory): older steps untouched, the partial one gone, one sentence."""
    state = _tiny_state()
    ckpt = checkpoints.Checkpointer(str(tmp_path))
    assert ckpt.save(20, state)
    before = snapshot(str(tmp_path))
    real_save = ckpt._manager.save

    def full(step, *args, **kwargs):
        partial = tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-99"
        partial.mkdir()
        (partial / "half").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", full)
    with pytest.raises(errors.DiskFullError) as raised:
        ckpt.save(40, state)
    message = str(raised.value)
    assert f"the disk of --workdir={tmp_path} is full" in message
    assert "free at least" in message and "resume from step 20" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20"]
    assert_untouched(before, str(tmp_path))
    monkeypatch.setattr(ckpt._manager, "save", real_save)
    assert ckpt.save(40, state)  # with room again, the same save works
    ckpt.close()


def test_orbax_errors_logged_after_a_failed_save_stay_off_the_console(tmp_path, monkeypatch):
    """Orbax's other I/O threads of a save that hit a full disk log the same failure after
    the save raised (seen after the one-sentence error under load). From the failure on,
    Orbax's ERROR records are dropped by the handlers; everyone else's still print."""
    import logging as pylogging

    class Keep(pylogging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    keep = Keep()
    root = pylogging.getLogger()
    root.addHandler(keep)
    try:
        ckpt = checkpoints.Checkpointer(str(tmp_path))

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ckpt._manager, "save", full)
        with pytest.raises(errors.DiskFullError):
            ckpt.save(20, _tiny_state())
        for path, message in (("/site/orbax/checkpoint/future.py", "late RESOURCE_EXHAUSTED"),
                              ("/site/mine/train.py", "a later error of ours")):
            root.handle(root.makeRecord("absl", pylogging.ERROR, path, 1, message, (), None))
        assert keep.messages == ["a later error of ours"]
    finally:
        root.removeHandler(keep)


def test_own_lines_leave_out_only_library_start_up_chatter():
    err = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
           "STDERR\nI0000 00:00:1796174458.253076   20607 port.cc:153] oneDNN\n"
           "I1202 01:22:21.737042 139 train.py:478] ours\nerror: x\n")
    assert own_lines(err) == ["I1202 01:22:21.737042 139 train.py:478] ours", "error: x"]


def test_orbax_unraisable_reports_are_dropped_and_others_kept():
    """After a failed restore Orbax's read coroutines are closed with their exception, which
    Python prints as "Exception ignored in: ..." with a traceback; the hook installed by the
    Checkpointer drops those (the failure is already reported in one sentence) and hands
    every other unraisable exception on."""
    import types

    from ebm_vs_score import library_reports

    seen = []
    hook = library_reports.quiet_orbax_unraisable(seen.append)
    source = "async def read():\n    raise ValueError('corrupt')\n"
    orbax_ns, other_ns = {}, {}
    exec(compile(source, os.path.join(os.sep, "site", "orbax", "s.py"), "exec"), orbax_ns)
    exec(compile(source, os.path.join(os.sep, "site", "mine", "s.py"), "exec"), other_ns)
    orbax_coro, other_coro = orbax_ns["read"](), other_ns["read"]()
    for coro in (orbax_coro, other_coro):
        hook(types.SimpleNamespace(object=coro, exc_traceback=None))
        coro.close()
    assert [u.object for u in seen] == [other_coro]



def test_loop_closed_reports_of_native_callbacks_are_dropped_and_others_kept():
    """A disk-full save ends with TensorStore's writes completing after Orbax closed its
    event loop: each completion calls loop.call_soon_threadsafe from C++, which raises
    "Event loop is closed", reported with PyErr_WriteUnraisable(NULL) -- a bare traceback
    per write after the one-sentence error (seen in the full-disk test under load). The
    hook drops exactly those; the same error raised under a Python frame of ours, or with
    an object named, and any other error, are handed on."""
    import asyncio
    import types

    from ebm_vs_score import library_reports

    seen = []
    hook = library_reports.quiet_orbax_unraisable(seen.append)
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    native = types.SimpleNamespace(object=None, exc_value=closed,
                                   exc_traceback=closed.__traceback__.tb_next)
    ours = types.SimpleNamespace(object=None, exc_value=closed,
                                 exc_traceback=closed.__traceback__)
    named = types.SimpleNamespace(object=loop, exc_value=closed,
                                  exc_traceback=closed.__traceback__.tb_next)
    other = types.SimpleNamespace(object=None, exc_value=ValueError("a bug"),
                                  exc_traceback=None)
    for unraisable in (native, ours, named, other):
        hook(unraisable)
    assert seen == [ours, named, other]
