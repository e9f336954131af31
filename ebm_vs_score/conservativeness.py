"""Asym and NAsym: how far a score field is from being a gradient field.

Chao, Sun, Liu, Huang & Lee, "On Investigating the Conservative Property of Score-Based
Generative Models", ICML 2023 (hereafter *Chao et al. 2023*), eq. 6-7, as their code
computes them. With ``J = ds/dx`` the Jacobian of one flattened example,

    Asym  = tr(J J^T) - tr(J J) = 1/2 ||J - J^T||_F^2,
    NAsym = ||J - J^T||_F^2 / (4 ||J||_F^2) = Asym / (2 tr(J J^T))  in [0, 1].

Asym is 0 exactly for gradient fields (symmetric J); NAsym is 1 for a rotation
(antisymmetric J). Two estimators share one interface:

* exact: ``jax.jacfwd``, D forward-mode passes over the whole batch;
* Hutchinson: with probes v (E[v v^T] = I), ``E ||J^T v||^2 = tr(J J^T)`` and
  ``E (J^T v).(J v) = tr(J J)``: one ``jax.vjp`` and one ``jax.jvp`` per probe.

Both evaluate the field on the whole batch at once. That is valid because fields are
example-wise (no network here mixes examples, DESIGN.md rule 2), and it lets a field close
over per-example times ``t`` of shape (B,). The Hutchinson traces are
``estimators.hutchinson_traces``, also the L_QC regularizer of ``losses.py`` (Chao et al.
2023, eq. 9-10), differentiable through both Jacobian factors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ebm_vs_score import estimators

Field = Callable[[jax.Array], jax.Array]


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def batch_jacobian(field: Field, x: jax.Array) -> jax.Array:
    """Per-example Jacobians ``J[b] = d field(x)[b] / d x[b]``, shape (B, D, D).

    One ``jax.jacfwd`` over a shift ``u`` (D,) added to every example: since examples do
    not interact, ``d field(x + u)[b] / du = J[b]``. Costs D jvps of the whole batch.
    """
    d = math.prod(x.shape[1:])

    def shifted(u):
        return _flat(field(x + u.reshape(x.shape[1:])[None]))

    return jax.jacfwd(shifted)(jnp.zeros((d,), x.dtype))


# The Hutchinson traces live in ``estimators`` (shared with L_QC); these names stay here
# for callers of this module (benchmarks/experiments.py).
hutchinson_traces = estimators.hutchinson_traces
_probe_terms = estimators._probe_terms


def _asym_nasym(tr_jjt: jax.Array, tr_jj: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Asym and NAsym from the two traces (NAsym = 0 where J = 0)."""
    asym = tr_jjt - tr_jj
    safe = jnp.where(tr_jjt > 0, tr_jjt, 1.0)
    return asym, jnp.where(tr_jjt > 0, asym / (2.0 * safe), 0.0)


def asymmetry(
    field: Field, x: jax.Array, *, key: jax.Array | None = None, num_probes: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Asym and NAsym of ``field`` at each example of ``x`` (Chao et al. 2023, eq. 6-7).

    Args:
      field: maps a batch (B, ...) to a batch of the same shape, example-wise (e.g. a score
        with params and per-example times bound).
      x: (B, ...) points; each example is flattened to D dimensions.
      key: PRNG key for the Rademacher probes; required when ``num_probes > 0``.
      num_probes: 0 for the exact Jacobian (``jax.jacfwd``, memory B D^2), otherwise the
        number of Hutchinson probes (one vjp + one jvp each, memory of one probe).

    Returns:
      ``(asym, nasym)``, each of shape (B,). With Hutchinson, NAsym is the ratio of the
      two estimates (biased for few probes, consistent as ``num_probes`` grows).

    Raises:
      ValueError: ``field(x)`` not shaped like ``x``, ``num_probes < 0``, or no key.
    """
    estimators.check_field(field, x, "field")
    if num_probes < 0:
        raise ValueError(f"num_probes={num_probes} must be 0 (exact) or a positive count.")
    if num_probes == 0:
        jac = batch_jacobian(field, x)
        tr_jjt = jnp.sum(jac**2, axis=(1, 2))
        tr_jj = jnp.einsum("bij,bji->b", jac, jac)
    else:
        if key is None:
            raise ValueError(
                f"asymmetry with num_probes={num_probes} needs a PRNG key for the Hutchinson"
                " probes; pass key=jax.random.key(0) or num_probes=0 for the exact Jacobian."
            )
        tr_jjt, tr_jj = hutchinson_traces(field, x, key, num_probes)
    return _asym_nasym(tr_jjt, tr_jj)


@functools.partial(jax.jit, static_argnames=("score_fn", "sde", "num_levels", "num_probes"))
def asymmetry_over_noise(
    score_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    *,
    sde,
    key: jax.Array,
    num_levels: int = 10,
    num_probes: int = 0,
) -> dict[str, jax.Array]:
    """Asym / NAsym averaged over data and noise levels, as Chao et al. 2023 Table 2.

    Data ``x0`` are perturbed, ``x_t = sde.perturb(x0, t, z)``, at each of ``num_levels``
    times ``t in linspace(sde.eps, sde.T, num_levels)``; the field is ``x -> score_fn(x, t)``.
    Levels run one after another (``lax.map``), so memory is that of one level.

    Args:
      score_fn: ``score_fn(x, t)`` with params bound (``parameterization.bind``).
      x0: (B, ...) clean data.
      sde: the noise process (``ebm_vs_score.sde``).
      key: PRNG key for the perturbations (and the probes).
      num_levels: number of noise levels L.
      num_probes: as in :func:`asymmetry` (0 = exact).

    Returns:
      ``{'asym', 'nasym'}``: means over all levels and data; ``{'asym_per_level',
      'nasym_per_level', 't'}``: (L,) arrays.
    """
    ts = jnp.linspace(sde.eps, sde.T, num_levels)
    keys = jax.random.split(key, num_levels)

    def level(args):
        t, k = args
        k_noise, k_probe = jax.random.split(k)
        tb = jnp.full((x0.shape[0],), t, x0.dtype)
        xt = sde.perturb(x0, tb, jax.random.normal(k_noise, x0.shape, x0.dtype))
        field = lambda y: score_fn(y, jnp.full((y.shape[0],), t, y.dtype))
        asym, nasym = asymmetry(field, xt, key=k_probe, num_probes=num_probes)
        return jnp.mean(asym), jnp.mean(nasym)

    asym, nasym = jax.lax.map(level, (ts, keys))
    return {
        "asym": jnp.mean(asym),
        "nasym": jnp.mean(nasym),
        "asym_per_level": asym,
        "nasym_per_level": nasym,
        "t": ts,
    }
