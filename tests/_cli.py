"""Running ``python -m ebm_vs_score.main`` in a subprocess and checking how it fails.

Every check of a refused input asserts the exit status, exactly one ``error:`` line on
stderr (and no other line of ours before the run starts), no traceback, and that every
file already in the workdir is byte-identical afterwards (``error.log``, the failure log,
may only grow). With ``EBM_FAULTS_TALLY=FILE`` each check appends one JSON line to FILE,
from which the counts of the fault suite are computed (inputs, one-sentence errors,
tracebacks, advice followed, files changed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "configs", "toy_score.py")
# A small, fast toy run: a few seconds of training on 2 cores.
SMALL = ["--config.model.hidden=(32,32)", "--config.training.batch_size=64",
         "--config.training.log_every=5", "--config.training.checkpoint_every=20",
         "--config.training.sample_every=100000", "--config.sampling.num_steps=5",
         "--config.sampling.num_samples=16"]
# Lines that C++ libraries (TensorFlow, XLA) print before absl's logging is set up; they
# are not the program's own output (the entry point is being taught to silence them).
_LIBRARY_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|"
                            r"[IWE]0000 00:00:)")
_FAILURE_LOG = "error.log"


def env(**extra) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO,
                PYTHONUNBUFFERED="1", **extra)


def command(*args) -> list[str]:
    return [sys.executable, "-m", "ebm_vs_score.main", *args]


def run_main(*args, cwd: str = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def own_lines(stderr: str) -> list[str]:
    """The stderr lines of the program itself (library start-up chatter left out)."""
    return [line for line in stderr.splitlines() if line.strip()
            and not _LIBRARY_NOISE.match(line)]


def tally(kind: str, **fields) -> None:
    path = os.environ.get("EBM_FAULTS_TALLY")
    if not path:
        return
    case = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    with open(path, "a") as f:
        f.write(json.dumps(dict(kind=kind, case=case, **fields), sort_keys=True) + "\n")


def error_line(out: subprocess.CompletedProcess, *, status: int = 1,
               only_line: bool = True) -> str:
    """The one ``error:`` line of a refused (or failed) command.

    ``only_line``: refused before any work, so it is the program's only stderr line;
    otherwise it is the last line, after the run's log.
    """
    lines = own_lines(out.stderr)
    errors = [line for line in lines if line.startswith("error: ")]
    traceback = "Traceback" in out.stderr
    tally("input", status=out.returncode, errors=len(errors), traceback=traceback,
          one_sentence=len(errors) == 1 and not traceback and out.returncode == status)
    assert out.returncode == status, out.stderr[-3000:]
    assert not traceback, out.stderr[-3000:]
    assert len(errors) == 1, out.stderr[-3000:]
    assert lines[-1] == errors[0], out.stderr[-3000:]
    assert len(lines) == 1 or not only_line, out.stderr[-3000:]
    return errors[0]


def snapshot(root) -> dict[str, bytes]:
    """Path (relative to ``root``) -> contents of every file under ``root``."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def changed_files(before: dict[str, bytes], root, *, append_only: tuple[str, ...] = ()
                  ) -> list[str]:
    """Files of ``before`` that are gone or differ now; ``error.log`` and the files named
    in ``append_only`` may only have grown (their old bytes still their start)."""
    after = snapshot(root)
    grow = (_FAILURE_LOG,) + tuple(append_only)
    return [path for path, old in before.items()
            if not (after.get(path) == old or os.path.basename(path) in grow
                    and path in after and after[path].startswith(old))]


def assert_untouched(before: dict[str, bytes], root, *, append_only: tuple[str, ...] = ()
                     ) -> None:
    """Every file of ``before`` is byte-identical under ``root`` (``error.log`` and the
    files named in ``append_only`` may only have grown)."""
    changed = changed_files(before, root, append_only=append_only)
    tally("files", changed=len(changed), checked=len(before))
    assert not changed, changed


def advice_followed(name: str, ok: bool) -> None:
    tally("advice", advice=name, ok=bool(ok))
    assert ok, name


def train_small_run(directory) -> str:
    """A 40-step toy run (checkpoints 20 and 40) in ``directory/w``; cases copy it
    (:func:`copy_run`) before they damage it."""
    workdir = os.path.join(str(directory), "w")
    out = run_main(f"--config={TOY}", f"--workdir={workdir}", *SMALL,
                   "--config.training.n_iters=40")
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def copy_run(workdir: str, tmp_path) -> str:
    """A copy of ``workdir`` under ``tmp_path`` (the shared run stays undamaged)."""
    copy = os.path.join(str(tmp_path), "w")
    shutil.copytree(workdir, copy)
    return copy

