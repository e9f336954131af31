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


_KERNELS_PROBE = (
    "import jax, jax.numpy as jnp; from ebm_vs_score import hostcpu; "
    "changed = hostcpu.use_fast_cpu_kernels(); "
    "conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
    "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))); "
    "hlo = conv.lower(jnp.ones((8, 32, 32, 128)), jnp.ones((3, 3, 128, 128))).compile().as_text(); "
    "print(changed, 'ynn_fusion' in hlo)")


def _ynn_flag_known():
    import platform

    return (platform.machine().lower() in hostcpu.MEASURED_MACHINES
            and hostcpu._xla_knows(hostcpu.YNN_FLAG))


@pytest.mark.skipif(not _ynn_flag_known(), reason="this jaxlib/CPU has no YNN fusion flag")
def test_fast_cpu_kernels_replace_ynnpack_convolutions_before_jax_starts():
    env = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "EBM_XLA_CPU_DEFAULTS": ""}
    assert _devices_in_fresh_process(_KERNELS_PROBE, env) == "True False"
    kept = {**env, "EBM_XLA_CPU_DEFAULTS": "1"}  # XLA's default: this conv is a YNN fusion
    assert _devices_in_fresh_process(_KERNELS_PROBE, kept) == "False True"


def test_fast_cpu_kernels_leave_the_users_choice_and_a_started_jax_alone():
    user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=", "JAX_PLATFORMS": "cpu"}
    assert _devices_in_fresh_process(_KERNELS_PROBE, user).startswith("False")
    code = ("import jax; jax.devices(); from ebm_vs_score import hostcpu; "
            "print(hostcpu.use_fast_cpu_kernels())")
    assert _devices_in_fresh_process(code, {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}) == "False"
    assert not hostcpu._xla_knows("xla_cpu_flag_that_does_not_exist_anywhere")
