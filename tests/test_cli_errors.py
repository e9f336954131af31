"""Every bad input to ``python -m ebm_vs_score.main`` ends in one sentence on stderr, exit
status 1 and no traceback (DESIGN.md rule 8), and creates nothing it should not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "configs", "toy_energy.py")


def _main(*args, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "ebm_vs_score.main", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _one_sentence(out, *, only_line: bool = True) -> str:
    """The one ``error:`` line of a failed run: the only stderr line when the input is
    refused before any work (else the last one, after the run's log), no traceback."""
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 or not only_line, out.stderr[-3000:]
    assert lines[-1].startswith("error: ")
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


def test_unknown_config_field_suggests_the_right_name(tmp_path):
    line = _one_sentence(_main(f"--config={TOY}", f"--workdir={tmp_path / 'w'}",
                               "--config.training.n_iter=3"))
    assert "'n_iter'" in line and "did you mean 'n_iters'" in line
    assert not (tmp_path / "w").exists()


def test_missing_config_file(tmp_path):
    line = _one_sentence(_main("--config=configs/no_such.py", f"--workdir={tmp_path / 'w'}"))
    assert "configs/no_such.py" in line and "does not exist" in line


def test_config_file_with_a_syntax_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n    pass\n")
    line = _one_sentence(_main(f"--config={bad}", f"--workdir={tmp_path / 'w'}"))
    assert "syntax error at line 1" in line and str(bad) in line


def test_config_value_that_does_not_parse(tmp_path):
    line = _one_sentence(_main(f"--config={TOY}", f"--workdir={tmp_path / 'w'}",
                               "--config.training.n_iters=abc"))
    assert "--config.training.n_iters=abc" in line


def test_bad_config_value(tmp_path):
    line = _one_sentence(_main(f"--config={TOY}", f"--workdir={tmp_path / 'w'}",
                               "--config.training.batch_size=-3"))
    assert "training.batch_size=-3 must be positive" in line
    assert not (tmp_path / "w").exists()  # nothing committed for a run that never started


def test_workdir_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("not a directory")
    line = _one_sentence(_main(f"--config={TOY}", f"--workdir={target}"))
    assert "is a file, not a directory" in line
    assert target.read_text() == "not a directory"


def test_workdir_without_write_permission(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a mode allows: use a filesystem that refuses
        target = "/sys/ebm_vs_score_test/w"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = str(tmp_path / "ro" / "w")
    line = _one_sentence(_main(f"--config={TOY}", f"--workdir={target}"))
    assert "cannot write to --workdir" in line


@pytest.mark.parametrize("mode", ["eval", "sample"])
def test_eval_on_a_missing_workdir_creates_nothing(tmp_path, mode):
    workdir = tmp_path / "never_trained"
    line = _one_sentence(_main(f"--config={TOY}", f"--workdir={workdir}", f"--mode={mode}"))
    assert "does not exist" in line and "--mode=train" in line
    assert not workdir.exists()


def test_missing_data_and_the_retry_with_data_dir(tmp_path):
    """The message's advice (pass --config.data.data_dir=DIR) is accepted by the workdir:
    the failed run committed no config, so the retry is refused only for the data."""
    workdir = tmp_path / "w"
    args = [f"--config={os.path.join(REPO, 'configs', 'cifar_score.py')}",
            f"--workdir={workdir}", "--config.model.ch=16", "--config.model.ch_mult=(1,2)",
            "--config.model.num_groups=4", "--config.model.num_res_blocks=1"]
    line = _one_sentence(_main(*args, f"--config.data.data_dir={tmp_path / 'empty'}"),
                         only_line=False)
    assert "cifar10" in line and "--config.data.data_dir=DIR" in line
    assert not (workdir / "config.json").exists()
    retry = _one_sentence(_main(*args, f"--config.data.data_dir={tmp_path / 'other'}"),
                          only_line=False)
    assert "different config" not in retry and str(tmp_path / "other") in retry


def test_divergence_stops_in_one_sentence_and_its_advice_resumes(tmp_path):
    """lr 1e6 diverges within a few steps, before the first checkpoint: the message says
    nothing was saved and which flag to add; the same command with a lower lr (a field the
    workdir accepts on resume) then trains to the end."""
    small = ["--config.model.hidden=(32,32)", "--config.training.batch_size=64",
             "--config.training.n_iters=30", "--config.training.log_every=1",
             "--config.training.checkpoint_every=10", "--config.sampling.num_steps=5",
             "--config.sampling.num_samples=16"]
    args = [f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *small]
    line = _one_sentence(_main(*args, "--config.optim.lr=1e6", "--config.optim.warmup=0",
                               "--config.optim.grad_clip=0"), only_line=False)
    assert "before its first checkpoint" in line and "add --config.optim.lr=100000" in line
    assert "is kept" not in line
    retry = _main(*args, "--config.optim.lr=1e-3", "--config.optim.warmup=0",
                  "--config.optim.grad_clip=0")
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "optim.lr" in (tmp_path / "w" / "config_changes.jsonl").read_text()
