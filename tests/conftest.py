"""Tests run on the CPU kernels ``main`` chooses (``hostcpu.use_fast_cpu_kernels``: XLA's
Eigen convolutions instead of YNNPACK's), set before any test starts JAX."""

from ebm_vs_score import hostcpu

hostcpu.use_fast_cpu_kernels()
