"""Fault injection (DESIGN.md rule 6): SIGTERM and SIGKILL at random moments, broken and
partial checkpoint directories. Each case ends bit-identical to an uninterrupted run, or
with the documented one-line message; nothing is deleted.

The default run holds one SIGTERM trial right after a periodic save (the moment that used
to save a step twice) and the checkpoint cases; ``-m slow`` runs 10 SIGTERM trials at
random moments (before the first checkpoint, during saves, right after them), and CI
runs the first 3 of them with ``-m "slow and analytic"``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ebm_vs_score import checkpoints, config_base, errors, train

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
    model = train.builders.build_model(_config())
    template = train.init_state(model, train.make_optimizer(_config().optim), 0)
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


def _sigterm_trial(workdir, rng, after_save: bool, last_target: int = N_ITERS - EVERY) -> int:
    """Starts a run and SIGTERMs it at a random moment (``after_save``: within 0.5 s of
    the checkpoint of a random step up to ``last_target`` appearing); returns its status."""
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    start, target = time.time(), int(rng.integers(1, last_target // EVERY + 1)) * EVERY
    delay = rng.uniform(2, 40)
    while proc.poll() is None:
        saved = _steps(workdir)
        if after_save and saved and saved[-1] >= target or not after_save and (
                time.time() - start > delay):
            time.sleep(rng.uniform(0, 0.5))
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
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


def test_sigterm_right_after_a_periodic_save_exits_preempted_and_resumes(tmp_path, reference):
    workdir = str(tmp_path / "run")
    status = _sigterm_trial(workdir, np.random.default_rng(), after_save=True,
                            last_target=2 * EVERY)  # early: the run cannot finish first
    assert status == errors.PREEMPTED_EXIT_STATUS
    _resume_to_end(workdir)
    _assert_same(_state(workdir), reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", [  # CI (-m analytic) runs 3: a timed kill, one after a save
    pytest.param(t, marks=[pytest.mark.analytic] if t < 3 else []) for t in range(10)])
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
    assert all(name.startswith(f"step_{2 * EVERY:08d}")
               for name in os.listdir(os.path.join(workdir, "sample")))
    resumed = _run(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = [line for line in resumed.stderr.splitlines() if "cannot be loaded" in line]
    assert len(said) == 1 and f"resuming from checkpoint at step {2 * EVERY}" in resumed.stderr
    assert "cannot be loaded" in open(os.path.join(workdir, "error.log")).read()
    (kept,) = os.listdir(os.path.join(workdir, checkpoints.BROKEN_DIR))
    assert kept.startswith(f"{3 * EVERY}_")  # moved aside, not deleted
    _assert_same(_state(workdir), reference)


def _tiny_state():
    config = _config()
    model = train.builders.build_model(config)
    return train.init_state(model, train.make_optimizer(config.optim), 0)


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
