"""Evaluators of the model's vector field: Asym/NAsym, exact Fisher divergence, 2-D curl.

Each sees the model only as ``score_fn(params, x, t)`` and takes ``params`` as a jit
argument (never a constant), so one compilation serves every checkpoint and seed of a
shape (and JAX's persistent cache shares it between runs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score import conservativeness, metrics
from ebm_vs_score import parameterization as param_lib

Results = dict


def asymmetry_metrics(score_fn, params, x: np.ndarray, key, *, sde, num_levels: int,
                      num_probes: int) -> Results:
    """Asym / NAsym over data and ``num_levels`` noise levels (Chao et al. 2023, Table 2).

    Args:
      score_fn: ``s(params, x, t)``.
      params: the network parameters.
      x: (B, ...) clean data, perturbed at each level.
      key: PRNG key (perturbations and probes).
      sde: the noise process.
      num_levels: noise levels t in linspace(eps, T).
      num_probes: 0 = exact Jacobian, else Hutchinson probes (Chao et al. eq. 6-7).

    Returns:
      ``asym``, ``nasym`` (means) and the per-level lists with their ``t_levels``.
    """
    @jax.jit
    def run(params, x, key):
        return conservativeness.asymmetry_over_noise(
            param_lib.bind(score_fn, params), x, sde=sde, key=key,
            num_levels=int(num_levels), num_probes=int(num_probes))

    result = run(params, jnp.asarray(x), key)
    return {"asym": float(result["asym"]), "nasym": float(result["nasym"]),
            "asym_per_level": np.asarray(result["asym_per_level"]).tolist(),
            "nasym_per_level": np.asarray(result["nasym_per_level"]).tolist(),
            "t_levels": np.asarray(result["t"]).tolist()}


def fisher_metrics(score_fn, params, x: np.ndarray, key, *, sde, mixture,
                   num_levels: int) -> Results:
    """Exact Fisher divergence E||s - grad log p_t||^2 per level and its sigma^2-weighted mean.

    ``mixture`` is the Gaussian mixture the data came from (its noised scores are
    analytic); the sigma^2 weighting is DSM's (Song et al. 2021, eq. 7).
    """
    ts = jnp.linspace(sde.eps, sde.T, int(num_levels))

    @jax.jit
    def run(params, x, key):
        return metrics.fisher_divergence(param_lib.bind(score_fn, params), mixture, x,
                                         sde=sde, key=key, t_grid=ts)

    fisher = run(params, jnp.asarray(x), key)
    weighted = sde.marginal_std(ts) ** 2 * fisher
    return {"fisher": float(jnp.mean(weighted)),
            "fisher_per_level": np.asarray(fisher).tolist(), "t_levels": np.asarray(ts).tolist()}


def rotation_density(score_fn, points: jax.Array, t: float) -> tuple[jax.Array, jax.Array]:
    """Score s and its curl ds_y/dx - ds_x/dy at 2-D ``points`` (N, 2), time ``t``.

    The curl is the rotation density of the field (0 for a gradient field, 2 for the
    rotation (-y, x)); the Jacobian is exact, per point, by ``jax.jacfwd``.
    """
    def one(p):
        return score_fn(p[None], jnp.full((1,), t, p.dtype))[0]

    points = jnp.asarray(points, jnp.float32)
    jac = jax.vmap(jax.jacfwd(one))(points)  # (N, 2, 2): jac[n, i, j] = d s_i / d x_j
    return jax.vmap(one)(points), jac[:, 1, 0] - jac[:, 0, 1]


def score_field_grid(score_fn, params, times, lim: float, n: int = 21
                     ) -> dict[str, np.ndarray]:
    """Score and curl of ``score_fn(params, x, t)`` on an n x n grid over [-lim, lim]^2 at
    each time of ``times`` (one compilation for all times).

    Returns ``{'x', 'y'}`` (n, n) coordinates, ``'score'`` (T, n, n, 2), ``'curl'`` (T, n, n).
    """
    xs = np.linspace(-lim, lim, n, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs)
    points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1))
    run = jax.jit(lambda p, t: rotation_density(param_lib.bind(score_fn, p), points, t))
    fields, curls = [], []
    for t in times:
        s, c = run(params, jnp.float32(t))
        fields.append(np.asarray(s).reshape(n, n, 2))
        curls.append(np.asarray(c).reshape(n, n))
    return {"x": gx, "y": gy, "score": np.stack(fields), "curl": np.stack(curls)}
