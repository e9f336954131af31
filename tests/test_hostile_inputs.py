"""Hostile inputs to ``python -m ebm_vs_score.main``, each answered by one true sentence.

Each case asserts the exit status (1), exactly one ``error:`` line and nothing else of
the program's own on stderr, no traceback, the words the sentence must contain, and that
every file already in the workdir is byte-identical afterwards (a fresh workdir is not
even created). The cases cover: config files that fail in Python, fields checked at
start-up (nested sampler choices, model tables, malformed tuples, seeds, non-finite
values, sizes beyond the machine's memory), damaged workdir files, modes that do not fit
the config, remote and coordinator addresses nobody answers, and the command line.
``-m faults`` runs them all; the cases marked ``fast`` run by default.
"""

from __future__ import annotations

import os
import socket

import pytest
from _cli import (
    SMALL,
    TOY,
    assert_untouched,
    copy_run,
    error_line,
    run_main,
    snapshot,
    train_small_run,
)

pytestmark = pytest.mark.faults
FAST = pytest.mark.fast
CONFIG_FILES = {
    "raises": "def get_config():\n    x = 1\n    raise RuntimeError('boom')\n",
    "imports_missing": "import no_such_module_xyz\n\ndef get_config():\n    return None\n",
    "returns_dict": "def get_config():\n    return {'seed': 0}\n",
    "partial": ("import ml_collections\n\ndef get_config():\n"
                "    return ml_collections.ConfigDict({'seed': 0, 'training': {'n_iters': 3}})\n"),
    "no_get_config": "x = 1\n",
    "syntax": "def get_config(:\n    pass\n",
}


def _config_file(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(CONFIG_FILES[name])
    return str(path)


@pytest.mark.parametrize("name, expect", [
    pytest.param("raises", ["raises RuntimeError: boom in get_config() at line 3"], marks=FAST),
    ("imports_missing", ["ModuleNotFoundError", "no_such_module_xyz", "at line 1"]),
    ("returns_dict", ["returns dict, not an ml_collections.ConfigDict"]),
    ("partial", ["returns a config without the data section", "config_base.get_config"]),
    ("no_get_config", ["defines no get_config() function"]),
    ("syntax", ["syntax error at line 1"]),
])
def test_a_config_file_that_fails_in_python(tmp_path, name, expect):
    path = _config_file(tmp_path, name)
    line = error_line(run_main(f"--config={path}", f"--workdir={tmp_path / 'w'}"))
    assert path in line and all(e in line for e in expect), line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("config, expect", [
    ("DIR", "is a directory, not a config file"),
    ("configs/no_such.py", "does not exist"),
    ("configs/toy_score.py:extra", "raises TypeError"),
])
def test_a_config_path_that_is_not_a_config_file(tmp_path, config, expect):
    config = str(tmp_path) if config == "DIR" else config
    line = error_line(run_main(f"--config={config}", f"--workdir={tmp_path / 'w'}"))
    assert expect in line, line


# Fields checked at start-up: (flags, words of the sentence). Nothing may be created.
FIELDS = [
    pytest.param(["--config.sampling.method=pc", "--config.sampling.predictor=bogus"],
                 ["sampling.predictor='bogus'", "'reverse_diffusion'"], marks=FAST),
    (["--config.sampling.method=pc", "--config.sampling.corrector=bogus"],
     ["sampling.corrector='bogus'", "'langevin'"]),
    (["--config.sampling.method=ode", "--config.sampling.ode_solver=rk4"],
     ["sampling.ode_solver='rk4'", "'heun'"]),
    (["--config.sampling.predictor=bogus"], ["sampling.predictor='bogus'"]),  # unused now
    (["--config.sampling.method=pc", "--config.sampling.predictor=none",
      "--config.sampling.corrector=none"], ["would not move the samples"]),
    (["--config.sde.name=subvp", "--config.sampling.method=ancestral"],
     ["sampling.method='ancestral'"]),
    (["--config.model.embedding=bogus"], ["model.embedding='bogus'", "'fourier'"]),
    (["--config.model.hidden=(8,'a')"], ["model.hidden=(8, 'a')", "positive integers"]),
    (["--config.model.hidden=()"], ["model.hidden=()", "positive integers"]),
    (["--config.model.hidden=(8,-1)"], ["model.hidden=(8, -1)"]),
    (["--config.seed=-1"], ["seed=-1", "from 0 to 2147483647"]),
    (["--config.seed=4294967296"], ["seed=4294967296"]),
    (["--config.optim.lr=inf"], ["optim.lr=inf is not a finite number"]),
    (["--config.optim.lr=nan"], ["optim.lr=nan is not a finite number"]),
    (["--config.sde.sigma_max=inf"], ["sde.sigma_max=inf is not a finite number"]),
    (["--config.training.batch_size=1000000000"],
     ["training.batch_size=1000000000 needs at least", "GiB", "lower training.batch_size"]),
    (["--config.model.hidden=(1000000,1000000)"],
     ["parameters", "needs at least", "TiB", "smaller network"]),
    (["--config.sampling.num_samples=1000000000"], ["sampling.num_samples=1000000000"]),
    (["--config.sampling.num_steps=0"], ["sampling.num_steps=0"]),
    (["--config.eval.batch_size=0"], ["eval.batch_size=0"]),
    (["--config.data.dataset=mnist"],
     ["holds images", "data.image_size=0", "--config=configs/digits_score.py"]),
    (["--config.training.batch_size=-3"], ["training.batch_size=-3 must be positive"]),
    (["--config.optim.beta2=1.5"], ["optim.beta2=1.5"]),
    (["--config.model.dropout=1.0"], ["model.dropout=1.0"]),
]


def _small_with(flags: list[str]) -> list[str]:
    """SMALL, less the fields that ``flags`` set (a tuple flag given twice accumulates)."""
    fields = {f.split("=")[0] for f in flags}
    return [f for f in SMALL if f.split("=")[0] not in fields] + list(flags)


@pytest.mark.parametrize("flags, expect", FIELDS)
def test_a_field_is_refused_at_start_up_and_nothing_is_created(tmp_path, flags, expect):
    line = error_line(run_main(f"--config={TOY}", f"--workdir={tmp_path / 'w'}",
                               *_small_with(flags)))
    assert all(e in line for e in expect), line
    assert not (tmp_path / "w").exists()


@pytest.mark.fast
def test_grad_accumulation_that_does_not_divide_the_batch_leaves_nothing(tmp_path):
    line = error_line(run_main(f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *SMALL,
                               "--config.training.grad_accum_steps=3"))
    assert "training.batch_size=64 is not divisible by training.grad_accum_steps=3" in line
    assert "use a multiple of 3" in line
    assert not (tmp_path / "w").exists()  # no empty checkpoints/ either


def test_image_model_tuples(tmp_path):
    digits = os.path.join(os.path.dirname(TOY), "digits_score.py")
    line = error_line(run_main(f"--config={digits}", f"--workdir={tmp_path / 'w'}",
                               "--config.model.ch_mult=(1,0)"))
    assert "model.ch_mult=(1, 0) must be a tuple of positive integers" in line


# ----------------------------------------------------------------------------------------
# A workdir with a trained run in it
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_small_run(tmp_path_factory.mktemp("trained"))


def _damage(path: str, how: str) -> None:
    if how == "directory":
        os.remove(path)
        os.mkdir(path)
        return
    data = open(path, "rb").read()
    damaged = {"truncated": data[: len(data) // 2], "random": os.urandom(300),
               "empty": b""}[how]
    with open(path, "wb") as f:
        f.write(damaged)


@pytest.mark.parametrize("how, mode, expect", [
    pytest.param("truncated", "train", "is not valid JSON (line", marks=FAST),
    ("random", "train", "is not text (not UTF-8)"),
    ("empty", "train", "is empty"),
    ("directory", "train", "is a directory, not a file"),
    ("truncated", "sample", "is not valid JSON"),
    ("random", "eval", "is not text"),
])
def test_a_damaged_config_json_is_named_with_its_fix_and_left_alone(trained, tmp_path, how,
                                                                       mode, expect):
    workdir = copy_run(trained, tmp_path)
    config_json = os.path.join(workdir, "config.json")
    _damage(config_json, how)
    before = snapshot(workdir)
    line = error_line(run_main(f"--config={TOY}", f"--workdir={workdir}", *SMALL,
                               "--config.training.n_iters=40", f"--mode={mode}"))
    assert config_json in line and expect in line, line
    assert f"mv {config_json} {config_json}.damaged" in line
    assert_untouched(before, workdir)


@pytest.mark.parametrize("mode", ["sample", "eval"])
def test_sample_and_eval_with_another_config_do_not_offer_a_training_flag(trained, tmp_path,
                                                                            mode):
    workdir = copy_run(trained, tmp_path)
    before = snapshot(workdir)
    line = error_line(run_main(f"--config={TOY}", f"--workdir={workdir}", *SMALL,
                               "--config.model.hidden=(64,64)", f"--mode={mode}"))
    assert "different config" in line and "model.hidden" in line
    assert "--allow_config_change" not in line and "config.json" in line
    assert_untouched(before, workdir)


@pytest.mark.parametrize("allow", [True, False])
def test_a_bigger_network_is_refused_before_any_checkpoint_is_tried(trained, tmp_path,
                                                                     allow):
    """No checkpoint can fit the new network: one sentence that does not offer
    --allow_config_change (it could not help), and nothing is moved or said to be."""
    workdir = copy_run(trained, tmp_path)
    before = snapshot(workdir)
    out = run_main(f"--config={TOY}", f"--workdir={workdir}", *_small_with(
        ["--config.training.n_iters=60", "--config.model.hidden=(64,64)"]),
        *(["--allow_config_change"] if allow else []))
    line = error_line(out)
    assert "a network of another shape (model.hidden: [32, 32] -> [64, 64])" in line, line
    assert "use a new --workdir" in line
    assert "moved" not in out.stderr and "pybind11" not in out.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints_broken"))
    assert_untouched(before, workdir)


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_an_unreachable_remote_workdir(tmp_path, mode):
    line = error_line(run_main(f"--config={TOY}", "--workdir=gs://ebm-vs-score-no-such-bucket/w",
                               *SMALL, f"--mode={mode}"))
    assert "cannot reach --workdir=gs://ebm-vs-score-no-such-bucket/w" in line


# ----------------------------------------------------------------------------------------
# Modes that do not fit the config, and the command line
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, config, expect", [
    pytest.param("compose", "toy_score", ["--mode=compose needs", "configs/toy_compose.py"],
                 marks=FAST),
    ("study", "toy_score", ["--mode=study needs", "configs/study_toy.py"]),
    ("inpaint", "toy_score", ["--mode=inpaint needs data.dataset='digits'"]),
    ("fid_stats", "toy_score", ["--mode=fid_stats", "is a toy", "image config"]),
    ("fid_stats", "cifar_score", ["Inception weights not found",
                                  "--config.eval.inception_weights="]),
    ("inpaint", "digits_score", ["does not exist, so there is nothing to inpaint",
                                 "--mode=train"]),
    ("drl_long_run", "toy_score", ["--mode=drl_long_run needs a DRL config"]),
    ("energy_vs_ode", "toy_energy", ["nothing to energy_vs_ode", "--mode=train"]),
])
def test_a_mode_that_does_not_fit_the_config(tmp_path, mode, config, expect):
    path = os.path.join(os.path.dirname(TOY), f"{config}.py")
    line = error_line(run_main(f"--config={path}", f"--workdir={tmp_path / 'w'}",
                               f"--mode={mode}"))
    assert all(e in line for e in expect), line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, expect", [
    pytest.param(["extra"], ["unexpected argument(s) extra"], marks=FAST),
    (["--no_such_flag=1"], ["no_such_flag"]),
    (["--mode=bogus"], ["--mode"]),
])
def test_the_command_line(tmp_path, args, expect):
    line = error_line(run_main(f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *args))
    assert all(e in line for e in expect), line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_coordinator_nobody_answers_times_out_in_one_sentence(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    line = error_line(run_main(f"--config={TOY}", f"--workdir={tmp_path / 'w'}", *SMALL,
                               f"--coordinator_address={address}", "--num_processes=2",
                               "--process_id=1", "--coordinator_timeout=3"), only_line=False)
    assert f"nobody answered at the coordinator address {address} within 3 s" in line


# ----------------------------------------------------------------------------------------
# A study directory with a damaged file
# ----------------------------------------------------------------------------------------

STUDY = [f"--config={os.path.join(os.path.dirname(TOY), 'study_toy.py')}",
         "--config.study.families=('score',)", "--config.study.seeds=(0,)",
         "--config.training.n_iters=20", "--config.training.batch_size=64",
         "--config.model.hidden=(16,16)"]


@pytest.mark.parametrize("name", ["metrics.jsonl", "study_config.json"])
def test_a_damaged_study_file_is_named_and_left_alone(tmp_path, name):
    workdir = tmp_path / "study"
    target = (workdir / "runs" / "score_seed0" / name if name == "metrics.jsonl"
              else workdir / name)
    target.parent.mkdir(parents=True)
    target.write_bytes(b'{"step": 5, "split": "train"}\nnot json at all\n{"step": 10}\n'
                       if name == "metrics.jsonl" else b'{"study": {"scale": "to')
    before = snapshot(workdir)
    line = error_line(run_main(*STUDY, f"--workdir={workdir}", "--mode=study"),
                      only_line=False)
    assert str(target) in line and "move it aside" in line, line
    assert_untouched(before, workdir)
