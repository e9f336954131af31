"""Every bad input to ``python -m ebm_vs_score.main`` ends in one sentence on stderr, exit
status 1 and no traceback (DESIGN.md rule 8), and creates nothing it should not; advice
that the sentence gives is followed and works. (``test_hostile_inputs`` holds the whole
fault suite, ``-m faults``.)"""

from __future__ import annotations

import os
import re

import pytest
from _cli import REPO, SMALL, advice_followed, error_line, run_main

TOY = os.path.join(REPO, "configs", "toy_energy.py")


def _main(*args, cwd=REPO):
    return run_main(*args, cwd=cwd, timeout=600)


def _one_sentence(out, *, only_line: bool = True) -> str:
    """The one ``error:`` line of a failed run: the program's only stderr line when the
    input is refused before any work (else the last one, after the run's log)."""
    return error_line(out, only_line=only_line)


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


@pytest.mark.slow  # two CIFAR start-ups (70 s); the sentence itself: test_train's missing dataset
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


def _flag_in(line: str, field: str) -> str:
    (flag,) = re.findall(rf"--config\.{re.escape(field)}=\S+?(?=[ ,;)]|$)", line)
    return flag


def test_divergence_stops_in_one_sentence_and_its_advice_resumes(tmp_path):
    """lr 1e6 diverges within a few steps, before the first checkpoint: the message says
    nothing was saved, that this lr is implausible and which value to use; the same
    command with exactly that flag added then trains to the end."""
    args = [f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *SMALL,
            "--config.training.n_iters=30", "--config.training.log_every=1",
            "--config.optim.warmup=0", "--config.optim.grad_clip=0"]
    line = _one_sentence(_main(*args, "--config.optim.lr=1e6"), only_line=False)
    assert "before its first checkpoint" in line and "is kept" not in line
    assert "optim.lr=1e+06 is far above" in line
    flag = _flag_in(line, "optim.lr")
    retry = _main(*args, "--config.optim.lr=1e6", flag)
    advice_followed("divergence: implausible optim.lr", retry.returncode == 0)


@pytest.mark.slow  # 29 s; the divergence sentence and its advice stay in the default run
def test_divergence_before_any_update_names_the_field_not_the_learning_rate(tmp_path):
    """sigma_max=1e38 overflows sigma^2 in float32: the loss is NaN at step 1, before any
    update, so lowering lr cannot help; the sentence names sde.sigma_max and its default,
    and the same command with that default trains to the end."""
    args = [f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *SMALL,
            "--config.training.n_iters=30", "--config.sde.name=ve"]
    line = _one_sentence(_main(*args, "--config.sde.sigma_max=1e38"), only_line=False)
    assert "non-finite at step 1" in line and "optim.lr is not the cause" in line
    assert "--config.optim.lr" not in line
    (default,) = re.findall(r"sde\.sigma_max=1e\+38 \(default ([0-9.e+-]+)\)", line)
    retry = _main(*args, "--config.sde.sigma_max=1e38", f"--config.sde.sigma_max={default}")
    advice_followed("divergence: the field out of range", retry.returncode == 0)
