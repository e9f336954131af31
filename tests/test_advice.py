"""Each error that gives advice, followed to the letter: the advised command succeeds.

(Divergence: ``test_cli_errors``; Ctrl-C, two runs and a full disk: ``test_faults``.)
Every case first checks the refusal (status, one ``error:`` line, nothing changed), then
runs what the sentence says and asserts that it works.
"""

from __future__ import annotations

import os
import re

import pytest
from _cli import (
    SMALL,
    TOY,
    advice_followed,
    assert_untouched,
    copy_run,
    error_line,
    run_main,
    snapshot,
    train_small_run,
)

pytestmark = pytest.mark.faults
RUN = [f"--config={TOY}", *SMALL, "--config.training.n_iters=40"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_small_run(tmp_path_factory.mktemp("advice"))


@pytest.mark.fast
@pytest.mark.parametrize("mode", ["train", pytest.param("sample", marks=pytest.mark.slow)])
def test_a_damaged_config_json_moved_aside_lets_the_run_go_on(trained, tmp_path, mode):
    workdir = copy_run(trained, tmp_path)
    path = os.path.join(workdir, "config.json")
    with open(path, "wb") as f:
        f.write(b'{"data": {"dataset": "8gaus')
    before = snapshot(workdir)
    line = error_line(run_main(*RUN, f"--workdir={workdir}", "--config.training.n_iters=60",
                               f"--mode={mode}"))
    assert_untouched(before, workdir)
    (source, target) = re.search(r"\(mv (\S+) (\S+)\)", line).groups()
    os.rename(source, target)  # the advice, as written
    out = run_main(*RUN, f"--workdir={workdir}", "--config.training.n_iters=60",
                   f"--mode={mode}")
    assert open(target, "rb").read() == b'{"data": {"dataset": "8gaus'  # kept, not rewritten
    advice_followed(f"damaged config.json ({mode}): move it aside", out.returncode == 0)


def test_grad_accumulation_with_the_advised_multiple(tmp_path):
    args = [f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *SMALL,
            "--config.training.n_iters=10", "--config.training.grad_accum_steps=3"]
    line = error_line(run_main(*args))
    multiple = int(re.search(r"use a multiple of (\d+)", line).group(1))
    out = run_main(*args, f"--config.training.batch_size={22 * multiple}")
    advice_followed("grad accumulation: a multiple", out.returncode == 0)


def test_an_unknown_field_with_the_suggested_name(tmp_path):
    args = [f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *SMALL]
    line = error_line(run_main(*args, "--config.training.n_iter=10"))
    suggested = re.search(r"did you mean '([^']+)'", line).group(1)
    out = run_main(*args, f"--config.training.{suggested}=10")
    advice_followed("unknown field: the suggested name", out.returncode == 0)


def test_sample_without_a_run_then_train_first(tmp_path):
    workdir = str(tmp_path / "w")
    line = error_line(run_main(*RUN, f"--workdir={workdir}", "--mode=sample"))
    assert "--mode=train" in line and not os.path.exists(workdir)
    trained = run_main(*RUN, f"--workdir={workdir}", "--mode=train")
    out = run_main(*RUN, f"--workdir={workdir}", "--mode=sample")
    advice_followed("sample without a run: train first",
                    trained.returncode == 0 and out.returncode == 0)


def test_sample_with_another_config_then_the_trained_one(trained, tmp_path):
    workdir = copy_run(trained, tmp_path)
    other = [f for f in RUN if not f.startswith("--config.model.hidden")]
    line = error_line(run_main(*other, "--config.model.hidden=(64,64)",
                               f"--workdir={workdir}", "--mode=sample"))
    assert "the --config and --config.* flags the run was trained with" in line
    out = run_main(*RUN, f"--workdir={workdir}", "--mode=sample")
    advice_followed("sample with another config: the trained config", out.returncode == 0)


def test_a_network_of_another_shape_then_a_new_workdir(trained, tmp_path):
    workdir = copy_run(trained, tmp_path)
    bigger = [f for f in RUN if not f.startswith("--config.model.hidden")] + [
        "--config.model.hidden=(64,64)"]
    line = error_line(run_main(*bigger, f"--workdir={workdir}", "--allow_config_change"))
    assert "use a new --workdir" in line
    out = run_main(*bigger, f"--workdir={tmp_path / 'new'}")
    advice_followed("another network: a new workdir", out.returncode == 0)


def test_another_sde_is_refused_then_resumed_with_allow_config_change(trained, tmp_path):
    workdir = copy_run(trained, tmp_path)
    args = [*RUN, f"--workdir={workdir}", "--config.training.n_iters=60",
            "--config.sde.name=ve"]
    line = error_line(run_main(*args))
    assert "sde.name: 'vp' -> 've'" in line and "--allow_config_change" in line
    out = run_main(*args, "--allow_config_change")
    changes = open(os.path.join(workdir, "config_changes.jsonl")).read()
    advice_followed("another sde: --allow_config_change",
                    out.returncode == 0 and '"sde.name"' in changes)
