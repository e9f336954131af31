"""Training objectives: DSM (continuous, SMLD, DDPM), SSM, SSM-VR, ISM, and the QC regularizer.

Each public ``*_loss`` factory returns a pure ``loss_fn(params, batch, key) -> (loss,
metrics)``: ``batch['x']`` holds clean data (B, ...), ``key`` drives the noise, the
projections and (split off inside) the dropout of ``score(params, x, t, key)``;
``metrics`` reports every term as a scalar (``'loss'``, the base term ``'dsm'`` / ``'ssm'``
/ ``'ssm_vr'`` / ``'ism'``, and ``'qc'`` when the regularizer is on).

Conventions shared by all objectives, so that their values and the QC weight compare:

* Data are perturbed as ``x_t = alpha(t) x_0 + std(t) z`` (``sde.perturb``) and every
  per-example term is *noise-conditional* and weighted by ``std(t)^2`` (Song et al. 2021,
  eq. 7 with lambda = std^2), unless likelihood weighting (g(t)^2) is asked for.
* A per-example term is written in its "1/2 sum over dimensions" form -- the form in which
  all of them equal explicit score matching 1/2 ||s - grad log p_t||^2 up to a constant --
  and ``reduce_mean=True`` divides it by the dimension D. (score_sde's ``reduce_mean``
  drops the 1/2 instead; the two differ by a factor 2 only.) L_QC is reduced the same way,
  so ``qc_weight`` means what it means in Chao et al. 2023 whatever ``reduce_mean`` is.
* The dropout mask is the same for every evaluation of the score within one loss call, so
  Jacobian terms (SSM, ISM, QC) differentiate the very function the base term evaluates.

References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021 (SDE DSM, eq. 7);
Song, Durkan, Murray & Ermon 2021 (likelihood weighting g^2); Song & Ermon 2019 (SMLD,
eq. 5-6); Ho, Jain & Abbeel 2020 (DDPM L_simple, eq. 14); Song, Garg, Shi & Ermon 2019
(sliced score matching, eq. 8, and its variance-reduced form, eq. 9); Hyvarinen 2005
(implicit score matching, eq. 4); Chao et al. 2023 (L_QC, Sec. 4, eq. 9-10, and their code).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ebm_vs_score import estimators
from ebm_vs_score.parameterization import ScoreFn
from ebm_vs_score.sde import SDE, batch_mul

Params = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[Params, dict, jax.Array], tuple[jax.Array, Metrics]]
BoundScore = Callable[[jax.Array, jax.Array], jax.Array]  # score(x, t), params and dropout bound
# objective(score, x0, key) -> (per-example term (B,), x_t, t, std): where it evaluated.
Objective = Callable[[BoundScore, jax.Array, jax.Array], tuple[jax.Array, ...]]

OBJECTIVES = ("dsm", "ssm", "ssm_vr", "ism", "drl", "eqm", "energy_matching")  # training.objective
# ('drl': drl/recovery.py; the time-invariant models' objectives: eqm.py and energy_matching.py)
TIME_INVARIANT_OBJECTIVES = ("eqm", "energy_matching")
DSM_VARIANTS = ("continuous", "smld", "ddpm")
PROJECTIONS = estimators.PROBES
ISM_MAX_DIM = 64


def _dim(x: jax.Array) -> int:
    return math.prod(x.shape[1:])


def _half_sq(r: jax.Array, reduce_mean: bool) -> jax.Array:
    """1/2 sum of squares per example, divided by D if ``reduce_mean``; (B,)."""
    per = 0.5 * jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=-1)
    return per / _dim(r) if reduce_mean else per


_dot = estimators.dot


def _perturb(sde, x0: jax.Array, key: jax.Array):
    """t ~ U(eps, T), z ~ N(0, I), x_t = alpha x0 + std z; returns (x_t, t, z, std)."""
    k_t, k_z = jax.random.split(key)
    t = jax.random.uniform(k_t, (x0.shape[0],), minval=sde.eps, maxval=sde.T)
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    return sde.perturb(x0, t, z), t, z, sde.marginal_std(t)


# ----------------------------------------------------------------------------------------
# Per-example building blocks (pure functions of a field x -> s(x), example-wise).


def qc_regularizer(
    field: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    std: jax.Array,
    key: jax.Array,
    num_probes: int = 1,
) -> jax.Array:
    """L_QC per example: ``std^2 * (||J^T v||^2 - (J^T v).(J v))`` averaged over probes.

    Chao et al. 2023, eq. 9-10: the Hutchinson estimate of Asym = tr(J J^T) - tr(J J) with
    Rademacher probes (one vjp + one jvp each), scaled by std(t)^2 as their code does.
    Gradients flow through both Jacobian factors (no stop_gradient). Returns (B,).
    """
    tr_jjt, tr_jj = estimators.hutchinson_traces(field, x, key, num_probes)
    return std**2 * (tr_jjt - tr_jj)


def qc_subset_size(batch_size: int, fraction: float) -> int:
    """How many examples of a batch L_QC is taken on: max(1, round(fraction B))."""
    return max(1, min(batch_size, round(fraction * batch_size)))


def amortized_qc(field: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
                 t: jax.Array, std: jax.Array, key: jax.Array, num_probes: int = 1, *,
                 fraction: float = 1.0, every: int = 1) -> jax.Array:
    """L_QC per example of a subset, unbiased for the batch mean of :func:`qc_regularizer`.

    The first ``qc_subset_size(B, fraction)`` examples (a batch is an i.i.d. draw, so they
    are a uniform subset: their mean is unbiased for the batch mean), and, if ``every > 1``,
    only on a random 1/every of the calls (a Bernoulli draw from ``key``, via ``lax.cond``
    so the skipped calls cost nothing) with the term multiplied by ``every`` there and 0
    elsewhere: E[result.mean()] = E[qc_regularizer(...).mean()] (Chao et al. 2023, eq. 9-10
    taken at a fraction of the cost). ``fraction=1, every=1`` is exactly ``qc_regularizer``.

    Args:
      field: ``field(y, t)``, the score with params bound.
      x, t, std: the perturbed batch (B, ...), its times and stds (B,).
      key: PRNG key of the probes (and of the Bernoulli draw when ``every > 1``).
      num_probes: Hutchinson probes per example.
      fraction: the share of the batch in (0, 1].
      every: take the term on 1 call in ``every`` on average.

    Returns:
      (m,) per-example L_QC of the subset, m = ``qc_subset_size(B, fraction)``.
    """
    m = qc_subset_size(x.shape[0], fraction)
    if m < x.shape[0]:
        x, t, std = x[:m], t[:m], std[:m]
    if every == 1:
        return qc_regularizer(lambda y: field(y, t), x, std, key, num_probes)
    k_take, k_qc = jax.random.split(key)
    take = jax.random.uniform(k_take) < 1.0 / every
    return jax.lax.cond(
        take, lambda: every * qc_regularizer(lambda y: field(y, t), x, std, k_qc, num_probes),
        lambda: jnp.zeros((m,), x.dtype))


def projections(key: jax.Array, shape: tuple[int, ...], kind: str = "rademacher") -> jax.Array:
    """Random projections v with E[v v^T] = I per example (Song et al. 2019, Sec. 3), float32.

    ``shape`` is (M, B, ...); ``kind``: 'rademacher', 'gaussian' or 'sphere'
    (``estimators.probes``).
    """
    return estimators.probes(key, shape, kind, jnp.float32)


def ssm_objective(
    field: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    v: jax.Array,
    *,
    variance_reduction: bool = False,
) -> jax.Array:
    """Sliced score matching per example, averaged over the M projections ``v`` (M, B, ...).

    Song et al. 2019, eq. 8: ``v^T (ds/dx) v + 1/2 (v^T s)^2``; with ``variance_reduction``
    (SSM-VR, eq. 9) the second term is ``1/2 ||s||^2``. One forward pass (``jax.linearize``)
    and one jvp per projection. In expectation both equal 1/2 ||s - grad log p||^2 - const.
    """
    s, vjv = estimators.jvp_quadratic(field, x, v)
    if variance_reduction:
        second = 0.5 * _dot(s, s)
    else:
        second = 0.5 * jnp.mean(jax.vmap(_dot, in_axes=(0, None))(v, s) ** 2, axis=0)
    return jnp.mean(vjv, axis=0) + second


def ism_objective(field: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Implicit score matching per example, ``tr(ds/dx) + 1/2 ||s||^2`` (Hyvarinen 2005, eq. 4).

    The trace is exact (``estimators.divergence``): one forward pass and D jvps, each along
    one coordinate of every example at once (examples do not interact); for small D only.
    """
    s, trace = estimators.divergence(field, x)
    return trace + 0.5 * _dot(s, s)


# ----------------------------------------------------------------------------------------
# Objectives: objective(score, x0, key) -> (per-example term, x_t, t, std).


def _continuous_dsm(sde, likelihood_weighting: bool, reduce_mean: bool) -> Objective:
    """Song et al. 2021 eq. 7: lambda(t) E||s(x_t, t) + z / std||^2 with t ~ U(eps, T)."""

    def objective(score, x0, key):
        x_t, t, z, std = _perturb(sde, x0, key)
        s = score(x_t, t)
        if likelihood_weighting:  # lambda = g(t)^2 (Song, Durkan, Murray & Ermon 2021)
            g2 = sde.sde(x_t, t)[1] ** 2
            per = g2 * _half_sq(s + batch_mul(1.0 / std, z), reduce_mean)
        else:  # lambda = std^2
            per = _half_sq(batch_mul(std, s) + z, reduce_mean)
        return per, x_t, t, std

    return objective


def _smld_dsm(sde, reduce_mean: bool) -> Objective:
    """Song & Ermon 2019 eq. 5-6: a uniform level i of the geometric sigma ladder, weight sigma^2.

    The model time is ``t_i = i T / (N - 1)``, for which ``std(t_i) = sigma_i`` exactly and
    ``sde.timestep(t_i) = i``.
    """

    def objective(score, x0, key):
        k_i, k_z = jax.random.split(key)
        i = jax.random.randint(k_i, (x0.shape[0],), 0, sde.N)
        sigma = sde.discrete_sigmas[i]
        t = i.astype(x0.dtype) * sde.T / (sde.N - 1)
        z = jax.random.normal(k_z, x0.shape, x0.dtype)
        x_t = x0 + batch_mul(sigma, z)
        return _half_sq(batch_mul(sigma, score(x_t, t)) + z, reduce_mean), x_t, t, sigma

    return objective


def _ddpm_dsm(sde, reduce_mean: bool) -> Objective:
    """Ho et al. 2020 eq. 14 (L_simple): ||eps - eps_hat||^2 with eps_hat = -std * s.

    A uniform step i in [0, N), ``x = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps``. The model time
    is ``t_i = (i + 1) T / N``: the times of the sampler grid ``linspace(T, 1/N, N)``, with
    ``sde.timestep(t_i) = i`` and ``std(t_i)`` within 5% of ``sqrt(1 - abar_i)`` (equal as
    N grows). The loss uses the chain's own ``sqrt(1 - abar_i)``.
    """

    def objective(score, x0, key):
        k_i, k_z = jax.random.split(key)
        i = jax.random.randint(k_i, (x0.shape[0],), 0, sde.N)
        abar = sde.alphas_cumprod[i]
        std = jnp.sqrt(1.0 - abar)
        t = (i + 1).astype(x0.dtype) * sde.T / sde.N
        z = jax.random.normal(k_z, x0.shape, x0.dtype)
        x_t = batch_mul(jnp.sqrt(abar), x0) + batch_mul(std, z)
        return _half_sq(z + batch_mul(std, score(x_t, t)), reduce_mean), x_t, t, std

    return objective


def _weighted(per, sde, x_t, t, std, likelihood_weighting, reduce_mean):
    """lambda(t) * per, lambda = std^2 or g(t)^2, divided by D if ``reduce_mean``."""
    weight = sde.sde(x_t, t)[1] ** 2 if likelihood_weighting else std**2
    return weight * per / (_dim(x_t) if reduce_mean else 1)


def _ssm(sde, variance_reduction, projection, num_projections, **weighting) -> Objective:
    """Noise-conditional (V)SSM at t ~ U(eps, T), weighted by lambda(t) (Song et al. 2019)."""

    def objective(score, x0, key):
        k_x, k_v = jax.random.split(key)
        x_t, t, _, std = _perturb(sde, x0, k_x)
        v = projections(k_v, (num_projections,) + x0.shape, projection).astype(x0.dtype)
        per = ssm_objective(lambda y: score(y, t), x_t, v, variance_reduction=variance_reduction)
        return _weighted(per, sde, x_t, t, std, **weighting), x_t, t, std

    return objective


def _ism(sde, max_dim: int, **weighting) -> Objective:
    """Noise-conditional exact ISM at t ~ U(eps, T), weighted by lambda(t) (Hyvarinen 2005)."""

    def objective(score, x0, key):
        check_ism_dim(_dim(x0), max_dim)
        x_t, t, _, std = _perturb(sde, x0, key)
        per = ism_objective(lambda y: score(y, t), x_t)
        return _weighted(per, sde, x_t, t, std, **weighting), x_t, t, std

    return objective


def _regularized(objective: Objective, score_fn, name: str, *, reduce_mean: bool = False,
                 qc_weight: float = 0.0, qc_probes: int = 1, qc_fraction: float = 1.0,
                 qc_every: int = 1, train: bool = True) -> LossFn:
    """``loss_fn(params, batch, key)``: the objective plus ``qc_weight * L_QC`` at its x_t, t.

    The keywords are those every factory takes (:func:`dsm_loss` documents them).
    """
    check_qc(qc_weight, qc_probes, qc_fraction, qc_every)

    def loss_fn(params, batch, key):
        k_obj, k_drop, k_qc = jax.random.split(key, 3)
        dropout = k_drop if train else None
        score = lambda x, t: score_fn(params, x, t, dropout)  # noqa: E731
        per, x_t, t, std = objective(score, batch["x"], k_obj)
        metrics = {name: jnp.mean(per)}
        loss = metrics[name]
        if qc_weight > 0:
            term = amortized_qc(score, x_t, t, std, k_qc, qc_probes, fraction=qc_fraction,
                                every=qc_every)
            metrics["qc"] = jnp.mean(term / _dim(x_t) if reduce_mean else term)
            loss = loss + qc_weight * metrics["qc"]
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn


# ----------------------------------------------------------------------------------------
# Public factories: score_fn(params, x, t, key=None) -> loss_fn(params, batch, key).
# ``**common``: reduce_mean, qc_weight, qc_probes, qc_fraction, qc_every, train.


def dsm_loss(score_fn: ScoreFn, sde: SDE, *, likelihood_weighting: bool = False,
             **common: Any) -> LossFn:
    """Continuous-time DSM for VE / VP / sub-VP (Song et al. 2021, eq. 7), metric ``'dsm'``.

    Args:
      score_fn: ``score(params, x, t, key=None)``; ``key`` is the dropout key.
      sde: a ``VESDE``, ``VPSDE`` or ``SubVPSDE``.
      likelihood_weighting: lambda(t) = g(t)^2 (Song, Durkan, Murray & Ermon 2021) instead
        of std(t)^2.
      **common: ``reduce_mean`` (divide per-example terms by D, module docstring; False),
        ``qc_weight`` and ``qc_probes`` (lambda and the probes K of L_QC; 0 = off, 1),
        ``qc_fraction`` and ``qc_every`` (L_QC on that share of the batch, on 1 step in
        ``qc_every`` on average, weighted so its expectation is unchanged:
        :func:`amortized_qc`; 1, 1), ``train`` (dropout on; True). The same for every
        factory below.
    """
    objective = _continuous_dsm(sde, likelihood_weighting, common.get("reduce_mean", False))
    return _regularized(objective, score_fn, "dsm", **common)


def smld_loss(score_fn: ScoreFn, sde: SDE, **common: Any) -> LossFn:
    """SMLD / NCSN DSM over the VE SDE's N geometric levels (Song & Ermon 2019, eq. 5-6)."""
    check_sde_for_variant("smld", sde.name)
    objective = _smld_dsm(sde, common.get("reduce_mean", False))
    return _regularized(objective, score_fn, "dsm", **common)


def ddpm_loss(score_fn: ScoreFn, sde: SDE, **common: Any) -> LossFn:
    """DDPM L_simple over the VP chain's N steps (Ho et al. 2020, eq. 14), metric ``'dsm'``."""
    check_sde_for_variant("ddpm", sde.name)
    objective = _ddpm_dsm(sde, common.get("reduce_mean", False))
    return _regularized(objective, score_fn, "dsm", **common)


def ssm_loss(score_fn: ScoreFn, sde: SDE, *, variance_reduction: bool = False,
             projection: str = "rademacher", num_projections: int = 1,
             likelihood_weighting: bool = False, **common: Any) -> LossFn:
    """Sliced score matching on perturbed data (Song et al. 2019, eq. 8; eq. 9 if VR).

    Metric ``'ssm'`` or ``'ssm_vr'``. ``projection`` in 'rademacher', 'gaussian', 'sphere';
    ``num_projections`` projections per example. Other arguments as in :func:`dsm_loss`.
    """
    check_ssm(projection, num_projections)
    objective = _ssm(sde, variance_reduction, projection, num_projections,
                     likelihood_weighting=likelihood_weighting,
                     reduce_mean=common.get("reduce_mean", False))
    name = "ssm_vr" if variance_reduction else "ssm"
    return _regularized(objective, score_fn, name, **common)


def ism_loss(score_fn: ScoreFn, sde: SDE, *, max_dim: int = ISM_MAX_DIM,
             likelihood_weighting: bool = False, **common: Any) -> LossFn:
    """Exact implicit score matching on perturbed data (Hyvarinen 2005, eq. 4), metric ``'ism'``.

    Refuses data with more than ``max_dim`` dimensions (the trace costs D jvps). Other
    arguments as in :func:`dsm_loss`.
    """
    objective = _ism(sde, max_dim, likelihood_weighting=likelihood_weighting,
                     reduce_mean=common.get("reduce_mean", False))
    return _regularized(objective, score_fn, "ism", **common)


# ----------------------------------------------------------------------------------------
# Checks of plain arguments: each refusal is one sentence saying what is wrong and how to
# fix it (``settings.py`` calls them at start-up, the factories when they build a loss).


def check_sde_for_variant(variant: str, sde_name: str | None) -> None:
    """SMLD is defined on the VE chain, DDPM on the VP chain."""
    need = {"smld": "ve", "ddpm": "vp"}.get(variant)
    if need is not None and sde_name is not None and sde_name != need:
        raise ValueError(
            f"training.dsm_variant={variant!r} is defined on the discrete chain of the "
            f"{need.upper()} SDE only, not sde.name={sde_name!r}; set sde.name={need!r} or "
            "training.dsm_variant='continuous'"
        )


def check_qc(weight: float, probes: int, fraction: float = 1.0, every: int = 1) -> None:
    """lambda >= 0, K >= 1, fraction in (0, 1], every >= 1."""
    if weight < 0:
        raise ValueError(f"training.qc_weight={weight} must be >= 0 (0 turns L_QC off)")
    if probes < 1:
        raise ValueError(f"training.qc_probes={probes} must be >= 1 (Hutchinson probes)")
    if not 0 < fraction <= 1:
        raise ValueError(f"training.qc_fraction={fraction} must lie in (0, 1] (the share of "
                         "the batch L_QC is taken on; 1 = all)")
    if int(every) != every or every < 1:
        raise ValueError(f"training.qc_every={every} must be an integer >= 1 (L_QC on one "
                         "step in qc_every on average; 1 = every step)")


def check_ssm(projection: str, num_projections: int) -> None:
    """A known projection kind and at least one projection."""
    if projection not in PROJECTIONS:
        raise ValueError(
            f"unknown training.ssm_projection {projection!r}; valid names: {list(PROJECTIONS)}"
        )
    if num_projections < 1:
        raise ValueError(f"training.ssm_num_projections={num_projections} must be >= 1")


def check_ism_dim(data_dim: int, max_dim: int) -> None:
    """Exact ISM costs D jvps: refuse D above ``max_dim``."""
    if data_dim > max_dim:
        raise ValueError(
            f"training.objective='ism' needs D={data_dim} Jacobian-vector products per step for "
            f"its exact trace, above training.ism_max_dim={max_dim}; use training.objective="
            "'ssm' or 'ssm_vr' (sliced score matching) for data of this size"
        )
