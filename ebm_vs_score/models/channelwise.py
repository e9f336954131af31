"""Conv, Dense and GroupNorm whose per-channel gradients are matrix products on the CPU.

Every bias, GroupNorm scale and shift and time-embedding projection is broadcast over the
batch and the pixels; the transpose of a broadcast is a sum over them, so backpropagation
takes one sum over (B, H, W) per per-channel parameter, dozens per step. With XLA:CPU's
own kernels (``hostcpu.use_fast_cpu_kernels``: YNNPACK off, because its convolution weight
gradients are slow) each such "column" reduction (keep the minor axis, sum the major ones)
is a single-threaded loop with its elementwise producers fused in, several times slower
than the same sum as a product with a vector of ones (``python -m benchmarks.experiments
--only=sums --batch=8``; docs/notes/cpu_fast_path.md). The broadcasts below are therefore
``jax.custom_jvp`` functions whose tangent is an outer product with ones; reverse mode
transposes it into a matrix-vector product, which XLA:CPU runs multi-threaded. The primal
is a plain broadcast, so values are unchanged; on GPUs and TPUs, whose reductions are
native, the plain broadcast is used throughout (``sums_as_products``).

The modules keep Flax's class and parameter names (``Conv_0/kernel``, ``Dense_0/bias``,
``GroupNorm_0/scale``), so parameter trees and checkpoints are the same as with
``flax.linen``'s layers, and they follow Flax's dtype rules (mixed precision: compute in
``dtype``, parameters float32, GroupNorm statistics float32).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_vs_score.models import conv as conv_lib

Dtype = Any
Initializer = Callable[..., jax.Array]


_LAYERS_PLATFORM = contextvars.ContextVar("layers_platform", default=None)


@contextlib.contextmanager
def layers_for(platform: str):
    """Traces the layers as they are traced on ``platform`` ("cpu", "gpu", "tpu") whatever
    the backend: to count, on a CPU, the FLOPs of the program an accelerator ran
    (``benchmarks/flops.py``)."""
    token = _LAYERS_PLATFORM.set(platform)
    try:
        yield
    finally:
        _LAYERS_PLATFORM.reset(token)


def _platform() -> str:
    return _LAYERS_PLATFORM.get() or jax.default_backend()


def canonical_convs() -> bool:
    """Whether convolutions differentiate into canonical convolutions (``models/conv.py``):
    on XLA:CPU only, whose loop bodies run non-canonical ones through a naive loop."""
    return _platform() == "cpu"


def sums_as_products() -> bool:
    """Whether gradient sums over the batch and pixels are written as matrix products:
    on XLA:CPU only (its column reductions are single-threaded loops)."""
    return _platform() == "cpu"


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _broadcast_by_product(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jnp.broadcast_to(_expand(v, shape), shape)


def _expand(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """(C,) -> (1, ..., 1, C); (B, C) -> (B, 1, ..., 1, C), to broadcast to ``shape``."""
    if v.ndim == 1:
        return v.reshape((1,) * (len(shape) - 1) + v.shape)
    return v.reshape(v.shape[:1] + (1,) * (len(shape) - 2) + v.shape[1:])


@_broadcast_by_product.defjvp
def _broadcast_by_product_jvp(shape, primals, tangents):
    (v,), (dv,) = primals, tangents
    out = _broadcast_by_product(v, shape)
    if v.ndim == 1:  # (N, 1) @ (1, C): its transpose is ones(N) @ G, a matrix-vector product
        ones = jnp.ones((math.prod(shape[:-1]), 1), dv.dtype)
        return out, (ones @ dv.reshape(1, -1)).reshape(shape)
    ones = jnp.ones((shape[0], math.prod(shape[1:-1])), dv.dtype)  # per example: (B, N, C)
    return out, jnp.einsum("bn,bc->bnc", ones, dv).reshape(shape)


def broadcast_channels(v: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Broadcasts per-channel ``v`` of shape (C,) or per-example (B, C) to ``shape``
    = (B, ..., C); its gradient is a matrix product on the CPU (module docstring)."""
    shape = tuple(shape)
    if v.ndim not in (1, 2) or v.shape[-1] != shape[-1] or (v.ndim == 2 and v.shape[0] != shape[0]):
        raise ValueError(f"cannot broadcast a {v.shape} array over (B, ..., C) = {shape}.")
    if sums_as_products():
        return _broadcast_by_product(v, shape)
    return jnp.broadcast_to(_expand(v, shape), shape)


def convolve(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             padding: str) -> jax.Array:
    """NHWC x HWIO convolution; on the CPU with derivatives that stay canonical inside XLA
    loops (``models/conv.py``), elsewhere ``lax.conv_general_dilated`` itself."""
    if not canonical_convs():
        return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                            dimension_numbers=conv_lib.DIMENSION_NUMBERS)
    pads = conv_lib.padding_pairs(x.shape[1:3], kernel.shape[:2], strides, padding)
    return conv_lib.conv(x, kernel, strides, pads)


class Dense(nn.Module):
    """``flax.linen.Dense`` (kernel (in, out), bias (out,)) with a product-gradient bias."""

    features: int
    dtype: Dtype | None = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        return y + broadcast_channels(bias, y.shape)


class Conv(nn.Module):
    """``flax.linen.Conv`` on NHWC images with HWIO kernels and 'SAME' padding (kernel
    (kh, kw, in, out), bias (out,)), with a product-gradient bias."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    dtype: Dtype | None = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape)
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = convolve(x, kernel, tuple(self.strides), self.padding)
        return y + broadcast_channels(bias, y.shape)


class GroupNorm(nn.Module):
    """``flax.linen.GroupNorm`` over the last axis (Wu & He 2018, eq. 1-3 with groups of
    C/G channels): float32 statistics, Var = E[x^2] - E[x]^2 clipped at 0 as in Flax,
    then ``scale * x_hat + bias`` with product-gradient scale and bias; on the CPU the
    statistics' sums over the pixels are products with ones too. (A closed-form
    ``custom_jvp`` of the standardization made the CIFAR step slower on XLA:CPU: 2.77 s
    against 2.35 s with autodiff of these lines.)"""

    num_groups: int
    epsilon: float = 1e-6
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(f"GroupNorm: {channels} channels do not split into "
                             f"{self.num_groups} groups; use a divisor (group_count).")
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean, mean_sq = _group_moments(xf, self.num_groups)
        var = jnp.maximum(mean_sq - mean**2, 0.0)
        grouped = xf.reshape(x.shape[0], -1, self.num_groups, channels // self.num_groups)
        x_hat = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        y = x_hat * broadcast_channels(scale, x.shape) + broadcast_channels(bias, x.shape)
        return y.astype(self.dtype or jnp.result_type(x, scale))


def _group_moments(x: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """E[x] and E[x^2] over the pixels and the C/G channels of each group, (B, 1, G, 1).
    On the CPU the sums over the pixels are batched products with ones (one pass each,
    multi-threaded: 1.5-2% of the CIFAR U step against XLA:CPU's reductions)."""
    batch, channels = x.shape[0], x.shape[-1]
    pixels = x.reshape(batch, -1, channels)
    count = pixels.shape[1] * (channels // groups)

    def group_sum(values):
        if sums_as_products():
            ones = jnp.ones(values.shape[:2], values.dtype)
            per_channel = jnp.einsum("bn,bnc->bc", ones, values)
        else:
            per_channel = values.sum(1)
        return per_channel.reshape(batch, 1, groups, -1).sum(-1, keepdims=True)

    return group_sum(pixels) / count, group_sum(pixels * pixels) / count
