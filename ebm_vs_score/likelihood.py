"""Likelihoods: probability-flow ODE log-densities and bits/dim; AIS for energy models.

* ``ode_log_prob``: the instantaneous change of variables along the probability-flow ODE
  (Song et al. 2021, App. D.2; Chen et al. 2018, Thm. 1; Grathwohl et al. 2019, FFJORD),
  integrated from ``eps`` to ``T`` with diffrax's adaptive Tsit5. The divergence is exact
  (one linearization and D JVPs) or the Skilling-Hutchinson estimate with probes drawn
  once and held fixed along the trajectory (FFJORD, Sec. 3.1), which keeps the estimate of
  ``log p`` unbiased.
* ``bits_per_dim`` / ``dataset_bits_per_dim``: NLL in bits/dim of data scaled to [-1, 1]
  with uniform dequantization, as Song et al. 2021 report it (their Table 2; score_sde
  ``likelihood.py`` and ``run_lib.evaluate``).
* ``ais_log_normalizer``: annealed importance sampling (Neal 2001) of log Z for
  ``exp(-E(x))`` at a fixed noise level, with the HMC transitions of :mod:`mcmc`, and
  ``ais_log_prob``. The divergence and the probes are those of :mod:`estimators`.

Everything is a pure function of arrays; nothing is jitted here except the per-batch
function of ``dataset_bits_per_dim``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ebm_vs_score import estimators, mcmc
from ebm_vs_score.mcmc import MCMCState
from ebm_vs_score.samplers import ScoreFn, ode_drift, solve_adaptive
from ebm_vs_score.sde import sum_sq

PROBES = ("rademacher", "gaussian")


def _check_ode_args(score_fn, x, sde, key, num_probes: int, probe: str) -> None:
    """ValueError naming the argument: probe count, key, probe kind, score_fn's shape."""
    if num_probes < 0:
        raise ValueError(f"num_probes={num_probes} must be 0 (exact) or a positive count")
    if num_probes > 0 and key is None:
        raise ValueError("a Hutchinson estimate (num_probes > 0) needs a PRNG key")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid names: {list(PROBES)}")
    t0 = jnp.full((x.shape[0],), sde.eps, x.dtype)
    estimators.check_field(lambda u: score_fn(u, t0), x, "score_fn")


def _augmented_field(drift: Callable, probes: jax.Array | None) -> Callable:
    """The vector field of ``(x, delta)`` whose value at t is (f~(x, t), div f~(x, t)): the
    exact divergence without probes, else v.(J v) per probe, shape (K, B) (Song et al. 2021,
    eq. 39-40)."""

    def vector_field(y, t):
        z, _ = y
        tb = jnp.full((z.shape[0],), t, z.dtype)
        if probes is None:
            return estimators.divergence(lambda u: drift(u, tb), z)
        return estimators.jvp_quadratic(lambda u: drift(u, tb), z, probes)

    return vector_field


def ode_log_prob(score_fn: ScoreFn, x: jax.Array, *, sde, key: jax.Array | None = None,
                 num_probes: int = 0, rtol: float = 1e-5, atol: float = 1e-5,
                 probe: str = "rademacher") -> tuple[jax.Array, dict[str, jax.Array]]:
    """log p_eps(x) per example (nats, in the space of x) by the probability-flow ODE.

    Integrates d/dt (x, delta) = (f~(x, t), div f~(x, t)), f~ = f - g^2 s / 2 (Song et al.
    2021, eq. 13 and eq. 39-40), from t = eps to T, and returns
    log p(x) = prior_logp(x(T)) + delta(T).

    Args:
      score_fn: ``s(x, t)``, params bound.
      x: (B, ...) points, read as samples at time ``sde.eps``.
      sde: the noise process.
      key: PRNG key for the probes (needed iff ``num_probes > 0``).
      num_probes: 0 = exact divergence (D JVPs per evaluation; small D); else the
        Hutchinson estimate with ``num_probes`` probes drawn once from ``key``.
      rtol, atol: tolerances of the adaptive solver (one step size for the whole batch).
      probe: 'rademacher' (default) or 'gaussian'.

    Returns:
      (log_prob (B,), info) with info ``nfe`` (evaluations of the augmented vector field,
      each one score linearization plus D or ``num_probes`` JVPs), ``prior_logp``,
      ``delta_logp`` (B,), ``num_steps`` and ``z`` = x(T), the latent code; with probes
      also ``delta_logp_per_probe`` (num_probes, B): the integral of each probe's
      estimate v.(J v) (their mean is ``delta_logp``; their spread over the probes gives
      the estimate's probe noise without a second solve).

    Raises:
      ValueError: ``score_fn`` output not shaped like ``x``, a bad probe count or name, or
        Hutchinson without a key.
    """
    _check_ode_args(score_fn, x, sde, key, num_probes, probe)
    probes = (estimators.probes(key, (num_probes,) + x.shape, probe, x.dtype)
              if num_probes else None)
    delta0 = jnp.zeros(x.shape[:1] if probes is None else (num_probes,) + x.shape[:1],
                       x.dtype)
    (z, delta), info = solve_adaptive(_augmented_field(ode_drift(score_fn, sde), probes),
                                      (x, delta0), sde.eps, sde.T, rtol=rtol, atol=atol)
    prior = sde.prior_logp(z)
    info = {"nfe": info["nfe"], "num_steps": info["num_steps"], "prior_logp": prior, "z": z}
    if probes is not None:  # one integral per probe: their mean is the estimate
        info["delta_logp_per_probe"] = delta
        delta = jnp.mean(delta, axis=0)
    info["delta_logp"] = delta
    return prior + delta, info


def uniform_dequantize(key: jax.Array, x: jax.Array, num_bins: int = 256) -> jax.Array:
    """Uniform dequantization of data on the grid {-1 + 2k/(num_bins-1)}: k = round((x+1)/2
    (num_bins-1)), returns 2 (k + u) / num_bins - 1, u ~ U[0, 1) (score_sde run_lib)."""
    k = jnp.round((x + 1.0) / 2.0 * (num_bins - 1))
    return 2.0 * (k + jax.random.uniform(key, x.shape, x.dtype)) / num_bins - 1.0


def bits_per_dim(score_fn: ScoreFn, x: jax.Array, *, sde, key: jax.Array,
                 num_probes: int = 1, dequantize: bool = True, num_bins: int = 256,
                 rtol: float = 1e-5, atol: float = 1e-5,
                 probe: str = "rademacher") -> tuple[jax.Array, dict[str, jax.Array]]:
    """NLL in bits/dim of data x in [-1, 1] with ``num_bins`` levels (Song et al. 2021).

    Integer data k in {0..L-1}^D (L = num_bins) are dequantized to x = 2 (k + u) / L - 1,
    u ~ U[0, 1)^D. The density of y = k + u is p_y = p_x (2/L)^D, and log P(k) >=
    E_u log p_y(k + u) (Theis et al. 2016), so

        bpd = -(log p_x(x) + D log(2/L)) / (D ln 2) = -log p_x(x) / (D ln 2) + log2(L) - 1,

    i.e. the offset 7 of score_sde for L = 256. With ``dequantize=False`` x is taken to
    be dequantized already (the offset still applies). ``key`` is split into the
    dequantization key and the probe key: ``k_deq, k_probe = jax.random.split(key)``.

    Returns:
      (bpd (B,), info) with info of ``ode_log_prob`` plus ``log_prob`` (nats) and ``x``,
      the dequantized points.
    """
    k_deq, k_probe = jax.random.split(key)
    if dequantize:
        x = uniform_dequantize(k_deq, x, num_bins)
    log_p, info = ode_log_prob(score_fn, x, sde=sde, key=k_probe, num_probes=num_probes,
                               rtol=rtol, atol=atol, probe=probe)
    dim = math.prod(x.shape[1:])
    bpd = -(log_p + dim * math.log(2.0 / num_bins)) / (dim * math.log(2.0))
    return bpd, {**info, "log_prob": log_p, "x": x}


def dataset_bits_per_dim(score_fn: ScoreFn, batches: Iterable[Any], *, sde, key: jax.Array,
                         num_probes: int = 1, dequantize: bool = True,
                         num_bins: int = 256, rtol: float = 1e-5, atol: float = 1e-5,
                         log_every: int = 10,
                         callback: Callable[[int, float], None] | None = None,
                         ) -> tuple[float, float]:
    """Mean bits/dim over every example of ``batches`` and its standard error.

    Batch i uses ``fold_in(key, i)``. The per-batch function is jitted once (per batch
    shape). Every ``log_every`` batches the running mean is logged (absl) and passed to
    ``callback(num_batches_done, running_mean)``.

    Returns:
      (mean, standard error = std / sqrt(n)) over all n examples, in bits/dim.
    """
    fn = jax.jit(functools.partial(
        bits_per_dim, score_fn, sde=sde, num_probes=num_probes,
        dequantize=dequantize, num_bins=num_bins, rtol=rtol, atol=atol))
    values: list[np.ndarray] = []
    for i, batch in enumerate(batches):
        bpd, _ = fn(jnp.asarray(batch), key=jax.random.fold_in(key, i))
        values.append(np.asarray(bpd))
        if (i + 1) % log_every == 0:
            running = float(np.mean(np.concatenate(values)))
            logging.info("bits/dim: %d batches, running mean %.4f", i + 1, running)
            if callback is not None:
                callback(i + 1, running)
    if not values:
        raise ValueError("dataset_bits_per_dim got no batches; check the evaluation split")
    allv = np.concatenate(values).astype(np.float64)
    stderr = float(allv.std(ddof=1) / math.sqrt(allv.size)) if allv.size > 1 else float("nan")
    return float(allv.mean()), stderr


# ----------------------------------------------------------------------------------------
# Annealed importance sampling (Neal 2001)
# ----------------------------------------------------------------------------------------


def ais_schedule(num_steps: int, schedule: str = "sigmoid", delta: float = 4.0) -> jax.Array:
    """Inverse temperatures 0 = beta_0 < ... < beta_K = 1, (K+1,).

    'linear', or 'sigmoid' (Grosse et al. 2015, Sec. 6: sigma(delta (2k/K - 1)) rescaled to
    [0, 1]), which spends more steps near both ends.
    """
    u = jnp.linspace(0.0, 1.0, num_steps + 1)
    if schedule == "linear":
        return u
    if schedule == "sigmoid":
        s = jax.nn.sigmoid(delta * (2.0 * u - 1.0))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"unknown AIS schedule {schedule!r}; valid names: ['linear', 'sigmoid']")


def _ais_potential(energy_fn, beta, base_std: float):
    """U_beta = (1-beta) |x|^2 / (2 s^2) + beta E(x) with aux (E, grad E) cached (1 NFE)."""

    def potential(x):
        e, g = mcmc.energy_and_grad(energy_fn, x)
        return _mix(x, beta, base_std, e, g)

    return potential


def _mix(x, beta, base_std, e, g):
    base = 0.5 * sum_sq(x) / base_std**2
    return (1 - beta) * base + beta * e, (1 - beta) * x / base_std**2 + beta * g, (e, g)


def _log_mean_exp_and_stderr(log_w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """log mean exp(log_w), its delta-method standard error std(w) / (sqrt(n) mean(w)),
    and the effective sample size (sum w)^2 / sum w^2 (Kong 1992)."""
    n = log_w.shape[0]
    w = jnp.exp(log_w - jnp.max(log_w))
    log_mean = jnp.log(jnp.mean(w)) + jnp.max(log_w)
    stderr = jnp.std(w, ddof=1) / (jnp.sqrt(n) * jnp.mean(w))
    return log_mean, stderr, jnp.sum(w) ** 2 / jnp.sum(w**2)


TAIL_SCALES = (8.0, 16.0)  # multiples of a data point: far outside the data shell


def energy_tail(energy_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                scales: tuple[float, float] = TAIL_SCALES) -> dict[str, Any]:
    """Whether exp(-E) can be normalizable, read along the rays through the points ``x``.

    In polar coordinates Z = ∫ exp(-E(x)) dx = ∫_{S^{D-1}} ∫_0^∞ exp(-E(r u)) r^{D-1} dr du,
    so Z < ∞ needs the radial integrand exp(-E(r u) + (D - 1) log r) to fall far out along
    almost every ray u. On the ray through a point x it falls between the scales a < b iff
    E(b x) - E(a x) > (D - 1) log(b / a). The perturbed-data energy grows like
    ||x||^2 / (2 var_t) and passes by orders of magnitude; an energy that is bounded along
    rays (a normalized network without a base term) fails, and then AIS's log Ẑ only rises
    with its budget (Z = ∞). A rising ray is strong evidence, not proof (the energy could
    turn upward farther out); falling rays are necessary, not sufficient, for Z < ∞.

    Args:
      energy_fn: ``E(x) -> (B,)`` with everything but x bound.
      x: (B, ...) points off the origin (the evaluation's points).
      scales: (a, b), in units of R.

    Returns:
      ``rising_fraction`` (of the B rays), ``growth_nats`` (median E(b R u) - E(a R u)),
      ``needed_nats`` ((D - 1) log(b / a)) and ``scales``.
    """
    a, b = scales
    dim = math.prod(x.shape[1:])
    norms = jnp.sqrt(sum_sq(x)).reshape((-1,) + (1,) * (x.ndim - 1))
    u = x / jnp.maximum(norms, 1e-12)
    radius = jnp.median(norms)
    e_a, e_b = energy_fn(a * radius * u), energy_fn(b * radius * u)
    growth = np.asarray(e_b - e_a, np.float64)
    needed = (dim - 1) * math.log(b / a)
    rising = ~(growth > needed)  # NaN counts as rising: no evidence of a fall
    return {"rising_fraction": float(np.mean(rising)), "growth_nats": float(np.median(growth)),
            "needed_nats": needed, "scales": [a, b]}


HMC_TARGET_ACCEPTANCE = 0.65  # Beskos et al. 2013 (Bernoulli 19(5A)): optimal ~0.651


def _ais_pass(energy_fn, key, shape, betas, steps, *, base_std: float, num_leapfrog: int,
              num_chains: int, adapt_rate: float = 0.0):
    """One annealing pass of ``num_chains`` chains over ``betas``: one MH-corrected HMC
    move per target, of size ``steps[k]`` at target k. With ``adapt_rate`` > 0 the size
    of move k is ``steps[0]`` scaled by exp(rate * sum_{j<k} (acc_j - 0.65)) (a
    Robbins-Monro walk toward :data:`HMC_TARGET_ACCEPTANCE`) and ``steps[1:]`` is unused.

    Returns the log weights (num_chains,), the mean acceptance of every move (K,) and the
    step size of every move (K,).
    """
    k_init, k_run = jax.random.split(key)
    x = base_std * jax.random.normal(k_init, (num_chains,) + tuple(shape))
    e, g = mcmc.energy_and_grad(energy_fn, x)

    def move(carry, inp):
        x, e, g, log_w, log_step = carry
        k, beta_prev, beta, fixed_step = inp
        step = jnp.exp(log_step) if adapt_rate > 0 else fixed_step
        base = 0.5 * sum_sq(x) / base_std**2
        log_w = log_w + (beta - beta_prev) * (base - e)
        state = MCMCState(x, *_mix(x, beta, base_std, e, g))
        state, prob, _ = mcmc.hmc_step(
            jax.random.fold_in(k_run, k), state, _ais_potential(energy_fn, beta, base_std),
            step, num_leapfrog=num_leapfrog)
        acc = jnp.mean(prob)
        log_step = log_step + adapt_rate * (acc - HMC_TARGET_ACCEPTANCE)
        return (state.x, *state.aux, log_w, log_step), (acc, step)

    num_steps = betas.shape[0] - 1
    carry = (x, e, g, jnp.zeros((num_chains,), x.dtype), jnp.log(steps[0]))
    (_, _, _, log_w, _), (acc, used) = jax.lax.scan(
        move, carry, (jnp.arange(num_steps), betas[:-1], betas[1:], steps))
    return log_w, acc, used


def _check_ais_base(base: str, base_std, base_mean, base_chol) -> None:
    if base != "gaussian":
        raise ValueError(f"unknown AIS base {base!r}; valid names: ['gaussian']")
    if base_mean is None and (jnp.ndim(base_std) > 0 or base_chol is not None):
        raise ValueError("a per-dimension base_std or a base_chol needs base_mean (the base "
                         "is then N(base_mean, S S^T)); pass it, or a float base_std alone")


def ais_log_normalizer(energy_fn: Callable[[jax.Array], jax.Array], key: jax.Array,
                       shape: tuple[int, ...], *, base: str = "gaussian",
                       base_std: float | jax.Array = 1.0, base_mean: jax.Array | None = None,
                       base_chol: jax.Array | None = None,
                       num_steps: int = 200, num_leapfrog: int = 5,
                       step_size: float = 0.1, num_chains: int = 256,
                       schedule: str = "sigmoid", tune_chains: int = 16
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """log Z = log ∫ exp(-E(x)) dx by annealed importance sampling (Neal 2001).

    Geometric path f_beta = f_0^(1-beta) exp(-beta E) from f_0 = exp(-|x|^2 / (2 base_std^2))
    (log Z_0 = D/2 log(2 pi base_std^2)) to exp(-E): ``num_steps`` targets, one MH-corrected
    HMC move (``num_leapfrog`` leapfrog steps) per target, ``num_chains`` chains, one
    ``lax.scan``; log w = sum_k (beta_k - beta_{k-1}) (-E(x_{k-1}) - log f_0(x_{k-1})).
    With ``tune_chains`` > 0 a pilot pass of that many chains (own key) first walks the
    step size of each target from ``step_size`` toward acceptance 0.65 (Beskos et al. 2013;
    Neal 2011, Sec. 4.2), and the estimate uses those sizes fixed: its kernels do not depend
    on its chains, so Ẑ stays unbiased. One size cannot fit a path from width ``base_std``
    to a learned energy (benchmarks/ais_budget.py); ``tune_chains=0`` keeps ``step_size``.

    With ``base_mean`` (one example's shape) the base is N(base_mean, S S^T), S =
    ``base_chol`` (D, D) or diag(``base_std``, per dimension or one value), and the anneal
    runs in the whitened coordinates z = S^-1 (x - base_mean)
    (:func:`whitened_ais_log_normalizer`). One HMC step size cannot fit a target whose
    scales differ by orders of magnitude between directions (pixels that are always
    background next to the strokes): in x the chains lag their targets and log Ẑ falls
    hundreds of nats short at ESS 1 (tests/test_likelihood.py).

    Args:
      energy_fn: ``E(x) -> (B,)`` with t bound; examples must not interact.
      key: PRNG key.
      shape: the shape of ONE example (no chain axis), e.g. (2,) or (32, 32, 3).

    Returns:
      (log_z, info): ``stderr`` (delta method), ``ess``, ``acceptance`` (mean), ``log_weights``,
      ``step_sizes`` (num_steps,), ``nfe`` per chain and ``tune_nfe`` (the pilot's, per
      estimating chain). log Ẑ is biased low (Jensen); at an ``ess`` of a few chains
      ``stderr`` says nothing and log Ẑ is only a stochastic lower bound.
    """
    _check_ais_base(base, base_std, base_mean, base_chol)
    if tune_chains < 0:
        raise ValueError(f"tune_chains={tune_chains} must be >= 0 (0: a fixed step size)")
    options = dict(num_steps=num_steps, num_leapfrog=num_leapfrog, step_size=step_size,
                   num_chains=num_chains, schedule=schedule, tune_chains=tune_chains)
    if base_mean is not None:
        return whitened_ais_log_normalizer(energy_fn, key, shape, base_mean=base_mean,
                                           base_std=base_std, base_chol=base_chol, **options)
    return _isotropic_ais(energy_fn, key, shape, base_std=base_std, **options)


def _isotropic_ais(energy_fn, key, shape, *, base_std: float, num_steps: int,
                   num_leapfrog: int, step_size: float, num_chains: int, schedule: str,
                   tune_chains: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`ais_log_normalizer` from N(0, base_std^2 I) (its arguments)."""
    betas = ais_schedule(num_steps, schedule)
    steps = jnp.full((num_steps,), step_size)
    options = dict(base_std=base_std, num_leapfrog=num_leapfrog)
    if tune_chains:  # without the pilot the estimate draws from ``key`` itself, as before
        _, _, steps = _ais_pass(energy_fn, jax.random.fold_in(key, 0), shape, betas, steps,
                                num_chains=tune_chains, adapt_rate=1.0, **options)
        key = jax.random.fold_in(key, 1)
    log_w, acc, steps = _ais_pass(energy_fn, key, shape, betas, jax.lax.stop_gradient(steps),
                                  num_chains=num_chains, **options)
    log_mean, stderr, ess = _log_mean_exp_and_stderr(log_w)
    log_z = 0.5 * math.prod(shape) * math.log(2 * math.pi * base_std**2) + log_mean
    nfe = 1 + num_steps * num_leapfrog
    info = {"stderr": stderr, "ess": ess, "acceptance": jnp.mean(acc), "log_weights": log_w,
            "step_sizes": steps, "nfe": jnp.asarray(nfe),
            "tune_nfe": jnp.asarray(nfe * tune_chains / num_chains)}
    return log_z, info


def whitened_ais_log_normalizer(energy_fn: Callable[[jax.Array], jax.Array], key: jax.Array,
                                shape: tuple[int, ...], *, base_mean: jax.Array,
                                base_std: float | jax.Array = 1.0,
                                base_chol: jax.Array | None = None, **ais_options: Any
                                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """log Z of exp(-E) by AIS from N(m, S S^T), annealed in the whitened coordinates z.

    S is ``base_chol`` (a (D, D) lower-triangular factor of a covariance, D = prod(shape))
    or else diag(``base_std``). The change of variables x = m + S z (Jacobian |det S|)
    gives log Z = log |det S| + log ∫ exp(-E(m + S z)) dz, and the second term is
    :func:`ais_log_normalizer` from N(0, I). This is AIS with HMC under the mass matrix
    (S S^T)^-1 (Neal 2011, Sec. 4.1): every direction moves on its own scale with one step
    size. ``ais_options`` are those of :func:`ais_log_normalizer` (not ``base_*``).
    """
    mean = jnp.broadcast_to(jnp.asarray(base_mean, jnp.float32), shape)
    dim = math.prod(shape)
    if base_chol is not None:
        chol = jnp.asarray(base_chol, jnp.float32)
        if chol.shape != (dim, dim):
            raise ValueError(f"base_chol has shape {chol.shape}; it must be ({dim}, {dim}), "
                             f"the Cholesky factor of the covariance of one example {shape}")

        def to_x(z):
            return mean + (z.reshape(z.shape[0], dim) @ chol.T).reshape(z.shape)

        log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    else:
        std = jnp.broadcast_to(jnp.asarray(base_std, jnp.float32), shape)

        def to_x(z):
            return mean + std * z

        log_det = jnp.sum(jnp.log(std))
    log_z, info = ais_log_normalizer(lambda z: energy_fn(to_x(z)), key, shape, base_std=1.0,
                                     **ais_options)
    return log_z + log_det, info


def pooled_ais_log_normalizer(energy_fn: Callable[[jax.Array], jax.Array], key: jax.Array,
                              shape: tuple[int, ...], *, bases: Sequence[dict[str, Any]],
                              num_chains: int = 256, **ais_options: Any
                              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """log Z of exp(-E) by AIS from several bases, the chains split evenly, weights pooled.

    Each base's Ẑ_i (:func:`ais_log_normalizer` with that base's ``base_*`` options and
    ``num_chains / len(bases)`` chains) is unbiased, so their mean is too: log Ẑ = log
    mean_i Ẑ_i is again a stochastic lower bound of log Z, at most ln(len(bases)) below the
    best base's (a defensive mixture of proposals; Hesterberg 1995). No base reaches every
    energy: one fitted to the data reaches a density massed on the data (a digits C-ResNet:
    hundreds of nats above N(0, I)), N(0, I) one spread wider than the data (Energy
    Matching's exp(-V) at temperature 1: nats above the fitted base); pooled, neither must
    be chosen in advance. ``info`` as :func:`ais_log_normalizer`'s over the pooled chains
    (``log_weights`` include each base's log Z_0), ``step_sizes`` per base, and
    ``log_z_per_base``, ``ess_per_base``.
    """
    if not bases or num_chains < len(bases):
        raise ValueError(f"{len(bases)} AIS bases need at least one and at most num_chains="
                         f"{num_chains} (every base gets num_chains / len(bases) chains)")
    per = num_chains // len(bases)
    runs = [ais_log_normalizer(energy_fn, jax.random.fold_in(key, i), shape, num_chains=per,
                               **base, **ais_options) for i, base in enumerate(bases)]
    log_w = jnp.concatenate([info["log_weights"] - _log_mean_exp_and_stderr(
        info["log_weights"])[0] + log_z for log_z, info in runs])
    log_z, stderr, ess = _log_mean_exp_and_stderr(log_w)
    mean = lambda name: jnp.mean(jnp.stack([info[name] for _, info in runs]))  # noqa: E731
    info = {"stderr": stderr, "ess": ess, "acceptance": mean("acceptance"),
            "log_weights": log_w, "nfe": runs[0][1]["nfe"], "tune_nfe": mean("tune_nfe"),
            "step_sizes": jnp.stack([info["step_sizes"] for _, info in runs]),
            "log_z_per_base": jnp.stack([z for z, _ in runs]),
            "ess_per_base": jnp.stack([info["ess"] for _, info in runs])}
    return log_z, info


def ais_log_prob(energy_fn_at_t: Callable[[jax.Array], jax.Array], x: jax.Array,
                 log_z: jax.Array) -> jax.Array:
    """log p(x) = -E(x) - log Z with log Z from ``ais_log_normalizer`` (nats, (B,))."""
    return -energy_fn_at_t(x) - log_z
