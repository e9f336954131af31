"""Trace estimators of a field's Jacobian J = d field / dx: probes, exact and Hutchinson.

One place for what sliced and implicit score matching (``losses``), the probability-flow
likelihood (``likelihood``), Asym / NAsym (``conservativeness``) and L_QC (``losses``) need:

* :func:`probes`: random v with E[v v^T] = I per example (Rademacher, Gaussian, sphere);
* :func:`jvp_quadratic`: ``field(x)`` and v . (J v) for a stack of directions v, by one
  ``jax.linearize`` and one JVP per direction;
* :func:`divergence`: tr J exactly (the D basis directions) or by Skilling-Hutchinson
  (Hutchinson 1989) over given probes;
* :func:`hutchinson_traces`: (tr(J J^T), tr(J J)) by one linearization and its transpose
  per Rademacher probe (Chao et al. 2023, eq. 9-10), differentiable through both factors.

Fields act example-wise (DESIGN.md rule 2): a batch (B, ...) in, a batch like it out, so a
direction of shape (B, ...) probes every example at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Field = Callable[[jax.Array], jax.Array]

PROBES = ("rademacher", "gaussian", "sphere")
UNROLL_PROBES = 4  # Hutchinson probes written out in the program; more run in a lax.scan


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-example inner product a_b . b_b, shape (B,)."""
    return jnp.sum((a * b).reshape(a.shape[0], -1), axis=-1)


def probes(key: jax.Array, shape: tuple[int, ...], kind: str = "rademacher",
           dtype=jnp.float32) -> jax.Array:
    """Random directions v with E[v v^T] = I per example (Song et al. 2019, Sec. 3).

    Args:
      key: PRNG key.
      shape: (M, B, ...) for M probes of a batch, or (B, ...) for one.
      kind: 'rademacher' (+-1), 'gaussian' (N(0, I)) or 'sphere' (uniform on the sphere of
        radius sqrt(D) of each example; needs the (M, B, ...) layout).
      dtype: of the result.
    """
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    if kind == "sphere":
        g = jax.random.normal(key, shape, dtype)
        axes = tuple(range(2, len(shape)))
        norm = jnp.sqrt(jnp.sum(g**2, axis=axes, keepdims=True))
        return g * jnp.sqrt(math.prod(shape[2:])) / norm
    raise ValueError(f"unknown probe kind {kind!r}; valid names: {list(PROBES)}")


def basis(x: jax.Array) -> jax.Array:
    """The D coordinate directions of every example at once, (D, B, ...)."""
    dim = math.prod(x.shape[1:])
    eye = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])
    return jnp.broadcast_to(eye, (dim,) + x.shape)


def jvp_quadratic(field: Field, x: jax.Array,
                  vs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(field(x), v . (J v))`` for each direction v of ``vs`` (M, B, ...); the second (M, B).

    One forward pass (``jax.linearize``) and one JVP per direction.
    """
    fx, jvp_fn = jax.linearize(field, x)
    return fx, jax.vmap(lambda v: dot(v, jvp_fn(v)))(vs)


def divergence(field: Field, x: jax.Array,
               probe_vs: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``field(x)`` and its per-example divergence tr(J), (B,).

    Exact when ``probe_vs`` is None: the sum over the D basis vectors e_j of e_j . (J e_j),
    D JVPs of one linearization (small D only). Otherwise the Skilling-Hutchinson mean over
    the probes v (M, B, ...) of v . (J v) (Hutchinson 1989), unbiased when E[v v^T] = I.
    """
    if probe_vs is None:
        fx, quad = jvp_quadratic(field, x, basis(x))
        return fx, jnp.sum(quad, 0)
    fx, quad = jvp_quadratic(field, x, probe_vs)
    return fx, jnp.mean(quad, 0)


def _probe_terms(field: Field, x: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(||J^T v||^2, (J^T v).(J v))`` per example for one probe batch ``v`` like ``x``.

    One ``jax.linearize`` gives ``J v``, and the transpose of that same linear map gives
    ``J^T v``: one forward pass of the field instead of two (a vjp and a jvp each run
    it; BENCHMARKS.md, finding 3).
    """
    _, jvp_fn = jax.linearize(field, x)
    jv = jvp_fn(v)
    (jtv,) = jax.linear_transpose(jvp_fn, x)(v)
    return jnp.sum(_flat(jtv) ** 2, axis=-1), jnp.sum(_flat(jtv) * _flat(jv), axis=-1)


def hutchinson_traces(field: Field, x: jax.Array, key: jax.Array,
                      num_probes: int) -> tuple[jax.Array, jax.Array]:
    """Hutchinson estimates of ``(tr(J J^T), tr(J J))`` per example, each (B,).

    With Rademacher v, E||J^T v||^2 = tr(J J^T) and E (J^T v).(J v) = tr(J J) (Chao et al.
    2023, eq. 9-10: their difference is L_QC and the Asym estimate). Up to
    ``UNROLL_PROBES`` probes run one after another in the program, each rematerialized
    (``jax.checkpoint``) so memory stays at one probe; more run in a ``lax.scan`` with the
    same body (compile time grows with the unrolled probes; a scan body costs the same per
    probe on XLA:CPU only because ``models/conv.py`` keeps its convolutions canonical,
    BENCHMARKS.md finding 2). Both draw the same probes. Differentiable w.r.t. anything
    the field closes over, through both Jacobian factors.
    """
    if num_probes < 1:
        raise ValueError(f"num_probes={num_probes} must be >= 1 for a Hutchinson estimate.")

    def probe(k: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _probe_terms(field, x, probes(k, x.shape, "rademacher", x.dtype))

    if num_probes == 1:
        return probe(key)
    keys = jax.random.split(key, num_probes)
    if num_probes <= UNROLL_PROBES:
        terms = [jax.checkpoint(probe)(k) for k in keys]
        return (sum(t[0] for t in terms) / num_probes, sum(t[1] for t in terms) / num_probes)

    @jax.checkpoint
    def body(carry, k):
        sq, cross = probe(k)
        return (carry[0] + sq, carry[1] + cross), None

    zeros = jnp.zeros((x.shape[0],), x.dtype)
    (sq, cross), _ = jax.lax.scan(body, (zeros, zeros), keys)
    return sq / num_probes, cross / num_probes


def check_field(field: Field, x: jax.Array, name: str = "field") -> None:
    """Raises ValueError naming ``name`` when ``field(x)`` is not shaped like ``x``.

    Uses ``jax.eval_shape``: no computation, works under ``jax.jit``.
    """
    out = jax.eval_shape(field, x)
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(
            f"{name} maps x of shape {tuple(x.shape)} to shape {tuple(out.shape)}; it must "
            f"return an array shaped like its input (one vector per example)")
