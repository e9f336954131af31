"""A run on a fresh machine: no TensorFlow unless TFDS is read, no library noise on stderr.

Each case runs a real subprocess, because what reaches stderr and what gets imported are
properties of a whole process (absl's handler, JAX's backend probing, C++ start-up lines).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs main as `python -m ebm_vs_score.main ...` would, and at exit (sys.exit included)
# writes the TensorFlow modules the process loaded to the file named by argv[1].
_MAIN_RECORDING_IMPORTS = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: json.dump(sorted(m for m in sys.modules
                                         if m.split('.')[0] == 'tensorflow'), open(out, 'w')))
sys.argv = ['ebm_vs_score.main'] + sys.argv[2:]
runpy.run_module('ebm_vs_score.main', run_name='__main__', alter_sys=True)
"""


def _run_main(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    imports = tmp_path / "tensorflow_modules.json"
    proc = subprocess.run([sys.executable, "-c", _MAIN_RECORDING_IMPORTS, str(imports), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    return proc, json.loads(imports.read_text())


def _stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_a_bad_value_is_one_stderr_line_and_loads_no_tensorflow(tmp_path):
    proc, tf_modules = _run_main(tmp_path, "--config=configs/toy_energy.py",
                                 f"--workdir={tmp_path / 'w'}",
                                 "--config.training.batch_size=-3")
    assert proc.returncode == 1
    assert _stderr_lines(proc) == ["error: training.batch_size=-3 must be positive"]
    assert tf_modules == []
    assert not (tmp_path / "w").exists()


def test_verbosity_shows_the_library_lines_again(tmp_path):
    proc, _ = _run_main(tmp_path, "--config=configs/toy_energy.py", f"--workdir={tmp_path}/w",
                        "--config.training.batch_size=-3", "--verbosity=1")
    lines = _stderr_lines(proc)
    assert proc.returncode == 1
    assert "error: training.batch_size=-3 must be positive" in lines
    assert any("xla_bridge" in line for line in lines)  # JAX's lines about its backends


@pytest.mark.parametrize("config", ["toy_score",  # digits: over a minute (-m slow)
                                    pytest.param("digits_energy", marks=pytest.mark.slow)])
def test_a_training_run_on_embedded_data_loads_no_tensorflow(tmp_path, config):
    proc, tf_modules = _run_main(
        tmp_path, f"--config=configs/{config}.py", f"--workdir={tmp_path / 'w'}",
        "--config.training.n_iters=2", "--config.training.log_every=1",
        "--config.sampling.num_steps=2", "--config.sampling.num_samples=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tf_modules == []
    assert list((tmp_path / "w").glob("events.out.tfevents.*"))  # TensorBoard still written
    assert not [line for line in _stderr_lines(proc) if not line.startswith(("I", "W"))]


def test_reading_patches32_loads_no_tensorflow():
    code = ("import sys; from ebm_vs_score import data, settings; "
            "c = settings.of_family('cifar', 'score', {'data.dataset': 'patches32'}).data; "
            "it = data.get_dataset(c, batch_size=4, split='train', seed=0); b = next(it); "
            "print(b['x'].shape, any(m.split('.')[0] == 'tensorflow' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"
