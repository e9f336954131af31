"""A 2-D convolution whose derivatives are canonical convolutions, in every loop body.

JAX transposes a convolution with respect to its input (the input gradient, which every
energy's score s = -grad E needs) into a convolution of the output gradient with the
same kernel array, read with its input and output feature axes swapped
(``dim_labels=b01f_01oi->b01f``). XLA:CPU rewrites such a convolution into its fast
NHWC/HWIO form (a transpose of the kernel, then Eigen) only in a program's entry
computation (``ConvCanonicalization``; jax-ml/jax#12868); inside a ``while`` or ``scan``
body, where samplers, MCMC, AIS and the ODE solvers evaluate the score, it runs through
a naive loop, 4-6x slower (BENCHMARKS.md, finding 2).

:func:`conv` computes the same convolution, ``lax.conv_general_dilated`` on NHWC images
with an HWIO kernel, but differentiates it itself:

* its JVP is ``conv_tangent(dx, w) + conv(x, dw)``, where ``conv_tangent`` is a linear
  primitive that computes ``conv(dx, w)`` (forward mode: Asym's and the ODE's JVPs, QC);
* the transpose of ``conv_tangent`` (reverse mode: the input gradient) is :func:`conv`
  of the output gradient with the kernel flipped in space and its feature axes swapped
  *in the array*, so XLA sees an HWIO kernel (``01io``): the canonical form, inside or
  outside a loop. That convolution is again :func:`conv`, so derivatives of any order
  stay canonical (the score's JVPs, the C training loss's gradient).

The weight gradient (transpose with respect to the kernel) is JAX's own rule: it is
needed only by training steps, which are entry computations. Values are those of
``lax.conv_general_dilated`` (same arithmetic, summation order aside).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
Pairs = tuple[tuple[int, int], ...]


def _plain(x, w, *, strides, padding, lhs_dilation):
    return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                    dimension_numbers=DIMENSION_NUMBERS)


def _dilate(n: int, d: int) -> int:
    return 0 if n == 0 else 1 + d * (n - 1)


def transpose_padding(in_size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                      out_size: Sequence[int], padding: Pairs,
                      lhs_dilation: Sequence[int]) -> Pairs:
    """Padding of the input-gradient convolution (as ``jax.lax``'s transpose computes it)."""
    pads = []
    for n, k, s, m, (lo, _), d in zip(in_size, kernel, strides, out_size, padding,
                                       lhs_dilation, strict=True):
        before = k - lo - 1
        pads.append((before, _dilate(n, d) + k - 1 - _dilate(m, s) - before))
    return tuple(pads)


def flip_swap(w: jax.Array) -> jax.Array:
    """The kernel of the input gradient: flipped in space, input and output features
    swapped in the array (HWIO of the transposed convolution)."""
    return jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Pairs,
         lhs_dilation: tuple[int, int] = (1, 1)) -> jax.Array:
    """``lax.conv_general_dilated(x, w, strides, padding, lhs_dilation)``, NHWC / HWIO,
    with explicit ``padding`` pairs; derivatives canonical on XLA:CPU (module docstring)."""
    return _plain(x, w, strides=strides, padding=padding, lhs_dilation=lhs_dilation)


def _conv_jvp(strides, padding, lhs_dilation, primals, tangents):
    x, w = primals
    dx, dw = tangents
    params = dict(strides=strides, padding=padding, lhs_dilation=lhs_dilation)
    y = conv(x, w, strides, padding, lhs_dilation)
    dy = None
    if not isinstance(dx, SymbolicZero):
        dy = conv_tangent_p.bind(dx, w, **params)
    if not isinstance(dw, SymbolicZero):
        dyw = _plain(x, dw, **params)
        dy = dyw if dy is None else dy + dyw
    return y, jnp.zeros_like(y) if dy is None else dy


conv.defjvp(_conv_jvp, symbolic_zeros=True)

# conv_tangent(dx, w) = conv(dx, w): linear in dx, w held fixed.
conv_tangent_p = jex_core.Primitive("canonical_conv_tangent")


def _tangent_abstract_eval(dx, w, *, strides, padding, lhs_dilation):
    out = jax.eval_shape(functools.partial(_plain, strides=strides, padding=padding,
                                           lhs_dilation=lhs_dilation), dx, w)
    return jax.core.ShapedArray(out.shape, out.dtype)


def _tangent_jvp(primals, tangents, *, strides, padding, lhs_dilation):
    dx, w = primals
    ddx, dw = tangents
    params = dict(strides=strides, padding=padding, lhs_dilation=lhs_dilation)
    y = conv_tangent_p.bind(dx, w, **params)
    out = None
    if type(ddx) is not ad.Zero:
        out = conv_tangent_p.bind(ddx, w, **params)
    if type(dw) is not ad.Zero:
        term = _plain(dx, dw, **params)
        out = term if out is None else out + term
    return y, ad.Zero.from_primal_value(y) if out is None else out


def _tangent_transpose(ct, dx, w, *, strides, padding, lhs_dilation):
    if ad.is_undefined_primal(w):
        raise ValueError("canonical_conv_tangent is linear in its input only")
    if type(ct) is ad.Zero:
        return ad.Zero(dx.aval), None
    in_size, out_size = dx.aval.shape[1:3], ct.shape[1:3]
    pads = transpose_padding(in_size, w.shape[:2], strides, out_size, padding, lhs_dilation)
    return conv(ct, flip_swap(w).astype(ct.dtype), tuple(lhs_dilation), pads,
                tuple(strides)).astype(dx.aval.dtype), None


def _tangent_batch(args, dims, *, strides, padding, lhs_dilation):
    (dx, w), (bx, bw) = args, dims
    params = dict(strides=strides, padding=padding, lhs_dilation=lhs_dilation)
    if bw is not None or bx is None:  # batched kernels: JAX's own batched convolution
        fn = functools.partial(_plain, **params)
        return jax.vmap(fn, in_axes=(bx, bw))(dx, w), 0
    dx = jnp.moveaxis(dx, bx, 0)
    n, b = dx.shape[:2]
    out = conv_tangent_p.bind(dx.reshape((n * b,) + dx.shape[2:]), w, **params)
    return out.reshape((n, b) + out.shape[1:]), 0


conv_tangent_p.def_abstract_eval(_tangent_abstract_eval)
conv_tangent_p.def_impl(jax.jit(_plain, static_argnames=("strides", "padding", "lhs_dilation")))
ad.primitive_jvps[conv_tangent_p] = _tangent_jvp
ad.primitive_transposes[conv_tangent_p] = _tangent_transpose
batching.primitive_batchers[conv_tangent_p] = _tangent_batch
mlir.register_lowering(conv_tangent_p, mlir.lower_fun(_plain, multiple_results=False))


def padding_pairs(in_size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  padding: str | Sequence[tuple[int, int]]) -> Pairs:
    """Explicit (low, high) pairs of a padding ('SAME', 'VALID' or pairs), as XLA pads."""
    if not isinstance(padding, str):
        return tuple((int(lo), int(hi)) for lo, hi in padding)
    pads = lax.padtype_to_pads(tuple(in_size), tuple(kernel), tuple(strides), padding)
    return tuple((int(lo), int(hi)) for lo, hi in pads)
