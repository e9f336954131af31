"""One XLA:CPU device per core (ebm_vs_score/hostcpu.py), and the peer benchmark's skip."""

import os
import subprocess
import sys

import pytest

from ebm_vs_score import hostcpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("batch, cores, expected", [
    (64, 2, 2), (64, 8, 8), (6, 4, 3), (7, 4, 1), (None, 3, 3), (12, 16, 12)])
def test_devices_for_batch_is_the_largest_divisor_within_the_cores(batch, cores, expected):
    assert hostcpu.devices_for_batch(batch, cores) == expected


def _devices_in_fresh_process(code: str, extra_env: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env.update(PYTHONPATH=ROOT, **extra_env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, cwd=ROOT)
    return out.stdout.strip()


_PROBE = ("import jax; from ebm_vs_score import hostcpu; "
          "n = hostcpu.use_cpu_cores(12, cores=3); print(n, jax.device_count())")


def test_use_cpu_cores_sets_the_device_count_before_the_backends_start():
    env = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    assert _devices_in_fresh_process(_PROBE, env) == "3 3"


def test_use_cpu_cores_respects_the_users_xla_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    assert _devices_in_fresh_process(_PROBE, env) == "0 4"


def test_use_cpu_cores_is_a_no_op_once_jax_has_started():
    code = ("import jax; jax.devices(); from ebm_vs_score import hostcpu; "
            "print(hostcpu.use_cpu_cores(12, cores=3), jax.device_count())")
    assert _devices_in_fresh_process(code, {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}) == "0 1"


def test_peer_benchmark_skips_with_a_reason_without_a_peer_checkout(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.peer_pytorch",
                          f"--peer_dir={tmp_path}"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    assert out.stdout.startswith("peer comparison skipped:")
