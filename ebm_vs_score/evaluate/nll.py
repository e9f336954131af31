"""One likelihood protocol for the probability-flow ODE and AIS.

Both estimators score the SAME points with the SAME conversion, so their numbers can be
compared (Gao et al. 2021, Table 4, set AIS next to other likelihoods):

* images (data scaled to [-1, 1], L levels per dimension): the evaluation examples are
  dequantized once, x = 2 (k + u) / L - 1 with u ~ U[0, 1)^D
  (``likelihood.uniform_dequantize``), and a log-density log p(x) in x-space becomes
  bits/dim by :func:`bits_per_dim` = -log p / (D ln 2) + log2(L) - 1, the convention of
  Song et al. 2021, Table 2 (score_sde's offset 7 for L = 256);
* vector data (toys): the points themselves, NLL in nats per example.

The ODE gives log p_eps(x) by the instantaneous change of variables (``likelihood.
ode_log_prob``; exact divergence or K Hutchinson probes, which the results name); AIS
gives log p(x) = -E(x, eps) - log Z with log Z by annealed importance sampling
(``likelihood.ais_log_normalizer``). Every NLL comes with its standard error over
examples; with probes also the probe noise of one example's K-probe estimate
(``nll_probe_std``: the spread of its K per-probe integrals, one solve; with one probe,
from a second draw on the first examples) and its share of the mean's standard error
(``nll_probe_se`` = nll_probe_std / sqrt(n), already inside ``nll_bpd_stderr``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ebm_vs_score import likelihood
from ebm_vs_score import parameterization as param_lib

Results = dict[str, Any]


class Protocol(NamedTuple):
    """How an NLL is measured (read from ``eval.*`` at the evaluation's config boundary).

    Attributes:
      num_bins: levels per dimension of discrete data (256 for 8-bit images); None for
        continuous data (nats, no dequantization, no offset).
      num_probes: 0 = exact divergence; K > 0 = K Rademacher probes (Hutchinson).
      rtol, atol: tolerances of the adaptive ODE solver.
      batch_size: examples per ODE call.
      probe_check: with one probe: examples scored twice (two probe draws) to state the
        probe noise (K >= 2 probes state it from their own spread).
    """

    num_bins: int | None
    num_probes: int = 0
    rtol: float = 1e-5
    atol: float = 1e-5
    batch_size: int = 512
    probe_check: int = 8


def protocol_points(key, x: np.ndarray, num_bins: int | None) -> np.ndarray:
    """The points both estimators score: uniformly dequantized images, or x itself."""
    if num_bins is None:
        return np.asarray(x)
    return np.asarray(likelihood.uniform_dequantize(key, jnp.asarray(x), int(num_bins)))


def bits_per_dim(log_prob, dim: int, num_bins: int) -> np.ndarray:
    """-(log p(x) + D log(2/L)) / (D ln 2): bits/dim of the discrete data (Song et al. 2021).

    The density of y = k + u in [0, L)^D is p_x (2/L)^D, and -E_u log p_y(k + u) bounds
    -log P(k) from above (Theis et al. 2016), hence the offset log2(L) - 1.
    """
    log_prob = np.asarray(log_prob, np.float64)
    return -(log_prob + dim * math.log(2.0 / num_bins)) / (dim * math.log(2.0))


def nll_summary(prefix: str, log_prob, dim: int, num_bins: int | None) -> Results:
    """``<prefix>_<unit>`` mean NLL and ``<prefix>_<unit>_stderr`` over examples.

    Unit ``bpd`` for discrete data (with ``<prefix>_nats`` too), ``nats`` for vector data.
    """
    nats = -np.asarray(log_prob, np.float64)
    out = {f"{prefix}_nats": float(nats.mean()),
           f"{prefix}_nats_stderr": _stderr(nats)}
    if num_bins is not None:
        bpd = bits_per_dim(log_prob, dim, num_bins)
        out.update({f"{prefix}_bpd": float(bpd.mean()), f"{prefix}_bpd_stderr": _stderr(bpd)})
    return out


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def divergence_label(num_probes: int) -> str:
    """'exact' or 'hutchinson_K' (K Rademacher probes), as the eval JSON names it."""
    return "exact" if int(num_probes) == 0 else f"hutchinson_{int(num_probes)}"


def ode_runner(score_fn, *, sde, protocol: Protocol):
    """The jitted ``(params, x, key) -> (log p_eps(x), info)`` of the probability-flow ODE."""
    @jax.jit
    def run(params, x, key):
        return likelihood.ode_log_prob(
            param_lib.bind(score_fn, params), x, sde=sde, key=key,
            num_probes=int(protocol.num_probes), rtol=protocol.rtol, atol=protocol.atol)

    return run


def ode_log_probs(run, params, x: np.ndarray, key, batch_size: int
                  ) -> tuple[np.ndarray, float, np.ndarray | None]:
    """log p_eps(x) (nats, (B,)) by ``run`` (:func:`ode_runner`) in batches, the mean NFE,
    and with K >= 2 probes each example's probe variance of its K-probe estimate (nats^2:
    the sample variance of the K per-probe integrals over K), else None.

    Batch i uses probes from ``fold_in(key, i)``.
    """
    values, nfe, variances = [], [], []
    for i, batch in enumerate(np.array_split(x, -(-len(x) // int(batch_size)))):
        log_p, info = run(params, jnp.asarray(batch), jax.random.fold_in(key, i))
        values.append(np.asarray(log_p))
        nfe.append(float(info["nfe"]))
        per_probe = info.get("delta_logp_per_probe")
        if per_probe is not None and per_probe.shape[0] > 1:
            per_probe = np.asarray(per_probe, np.float64)
            variances.append(per_probe.var(axis=0, ddof=1) / per_probe.shape[0])
        logging.info("ODE likelihood: %d of %d examples", sum(map(len, values)), len(x))
    probe_var = np.concatenate(variances) if variances else None
    return np.concatenate(values).astype(np.float64), float(np.mean(nfe)), probe_var


def ode_nll_metrics(score_fn, params, x: np.ndarray, key, *, sde, protocol: Protocol,
                    true_log_prob=None) -> Results:
    """ODE NLL of the protocol points ``x`` with its divergence, standard error and NFE.

    Args:
      score_fn: ``s(params, x, t)``; params: its parameters.
      x: (B, ...) points from :func:`protocol_points` (already dequantized).
      key: PRNG key of the probes.
      sde: the noise process; protocol: the :class:`Protocol`.
      true_log_prob: the exact log-density of the data (toys), for the gap KL(p || q).

    Returns:
      ``nll_nats`` (and ``nll_bpd``) with ``_stderr``, ``nll_nfe``, ``nll_probes`` (0 =
      exact), ``nll_divergence``; with probes ``nll_probe_std`` and ``nll_probe_se``
      (units of the NLL); with ``true_log_prob``
      ``nll_true_nats``, ``nll_gap_nats``, ``nll_gap_stderr``.
    """
    return ode_nll(score_fn, params, x, key, sde=sde, protocol=protocol,
                   true_log_prob=true_log_prob)[0]


def ode_nll(score_fn, params, x: np.ndarray, key, *, sde, protocol: Protocol,
            true_log_prob=None) -> tuple[Results, np.ndarray]:
    """:func:`ode_nll_metrics` and the per-example log p_eps(x) (nats, (B,)) it summarizes."""
    dim = int(np.prod(x.shape[1:]))
    run = ode_runner(score_fn, sde=sde, protocol=protocol)
    log_p, nfe, probe_var = ode_log_probs(run, params, x, key, protocol.batch_size)
    out = nll_summary("nll", log_p, dim, protocol.num_bins)
    out.update(nll_nfe=nfe, nll_probes=int(protocol.num_probes),
               nll_divergence=divergence_label(protocol.num_probes))
    if probe_var is not None:  # from the K per-probe integrals of every example
        unit = 1.0 if protocol.num_bins is None else dim * math.log(2.0)
        out["nll_probe_std"] = float(np.sqrt(np.mean(probe_var))) / unit
        out["nll_probe_se"] = out["nll_probe_std"] / math.sqrt(len(x))
    elif protocol.num_probes > 0 and protocol.probe_check > 1:
        out["nll_probe_std"] = probe_std(run, params, x, key, log_p, protocol)
        out["nll_probe_se"] = out["nll_probe_std"] / math.sqrt(len(x))
    if true_log_prob is not None:
        true_nll = -np.asarray(true_log_prob(jnp.asarray(x)), np.float64)
        gap = -log_p - true_nll
        out.update(nll_true_nats=float(true_nll.mean()), nll_gap_nats=float(gap.mean()),
                   nll_gap_stderr=_stderr(gap))
    return out, log_p


def energy_ode_agreement(energy_fn, params, x: np.ndarray, ode_log_prob: np.ndarray, *,
                         sde, batch_size: int = 512) -> Results:
    """Is exp(-E(x, eps)) / Z the density the probability-flow ODE computes? (no Z needed)

    If it is, log p_ODE(x) + E(x, eps) = -log Z for every point x, so over the points

    * ``ode_log_z`` = -mean(log p_ODE + E) is the log Z the ODE implies (with
      ``ode_log_z_stderr`` over examples), comparable with AIS's ``ais_log_z``, and
    * ``energy_ode_spread_nats`` = std(log p_ODE + E) is 0 up to the ODE's solver error and
      probe noise (``nll_probe_std``); a larger spread means the two are different densities.

    For a trained energy the two need not agree: s = -grad E is trained at every t, but
    nothing makes the family exp(-E(., t)) solve the Fokker-Planck equation, and the ODE
    density at eps depends on the score at every t, AIS's only on E(., eps). AIS's Z-hat is
    unbiased, so P(log Z-hat > log Z + a) <= exp(-a) (Markov): an ``ais_log_z`` far ABOVE
    ``ode_log_z`` means exp(-E) puts mass the ODE density does not, whatever the AIS
    budget; AIS NLL is then a (stochastic) lower bound on the energy's own NLL.

    Args:
      energy_fn: ``E(params, x, t) -> (B,)``; params: its parameters.
      x: (B, ...) the points ``ode_log_prob`` scored (from :func:`protocol_points`).
      ode_log_prob: (B,) log p_eps(x) of the ODE (nats, from :func:`ode_nll`).
      sde: the noise process (E is read at t = ``sde.eps``, where the ODE starts).
    """
    energy = jax.jit(lambda p, y: energy_fn(p, y, jnp.full((y.shape[0],), sde.eps)))
    chunks = np.array_split(x, -(-len(x) // int(batch_size)))
    e = np.concatenate([np.asarray(energy(params, jnp.asarray(c))) for c in chunks])
    residual = np.asarray(ode_log_prob, np.float64) + e.astype(np.float64)
    return {"ode_log_z": float(-residual.mean()), "ode_log_z_stderr": _stderr(residual),
            "energy_ode_spread_nats": float(residual.std(ddof=1)) if residual.size > 1
            else math.nan}


def probe_std(run, params, x, key, log_p, protocol: Protocol) -> float:
    """Standard deviation of one example's NLL over probe draws, in the report's unit.

    The first ``probe_check`` examples are scored again with independent probes; for two
    draws a, b of the same example, E[(a - b)^2] / 2 is the probe variance.
    """
    n = min(int(protocol.probe_check), len(x))
    again, _, _ = ode_log_probs(run, params, x[:n], jax.random.fold_in(key, 1 << 20),
                                protocol.batch_size)
    diff = again - log_p[:n]
    if protocol.num_bins is not None:
        diff = diff / (int(np.prod(x.shape[1:])) * math.log(2.0))
    return float(np.sqrt(np.mean(diff**2) / 2.0))


def energy_tail_metrics(energy, params, x: np.ndarray) -> Results:
    """``likelihood.energy_tail`` of ``energy(params, y) -> (B,)`` along the rays through
    ``x``: ``ais_normalizable`` (no ray where exp(-E)'s radial integrand still rises) and
    the ``energy_tail_*`` numbers behind it."""
    run = jax.jit(energy)
    tail = likelihood.energy_tail(lambda y: run(params, y), jnp.asarray(x))
    out = {"ais_normalizable": tail["rising_fraction"] == 0.0,
           "energy_tail_rising_fraction": tail["rising_fraction"],
           "energy_tail_growth_nats": tail["growth_nats"],
           "energy_tail_needed_nats": tail["needed_nats"], "energy_tail_scales": tail["scales"]}
    if not out["ais_normalizable"]:
        logging.warning(
            "eval: AIS skipped: exp(-E) does not fall off along %.0f%% of the rays through "
            "the test points (median E(%g R u) - E(%g R u) = %.3g nats, needs > %.3g; R: their "
            "median norm), so log Z = inf and any AIS estimate only grows with its budget "
            "(benchmarks/ais_budget.py)",
            100 * tail["rising_fraction"], *tail["scales"][::-1], tail["growth_nats"],
            tail["needed_nats"])
    return out


# Below this Kong (1992) effective sample size, AIS's log Z-hat is the largest few chains'
# weights: its ± over chains says nothing and, log Z-hat being biased low (Jensen), the AIS
# NLL is an optimistic guess that a longer anneal raises. Measured on the digits C-ResNet
# (ESS 1-3 of 256) and its width-40 ablation (ESS 1 of 256, AIS NLL -4.6 and -5.5 bits/dim
# on two trainings of one seed: below zero, impossible for a normalized density).
AIS_MIN_ESS = 10.0


def ais_converged(metrics: dict[str, Any]) -> bool:
    """Whether an eval's AIS numbers can be read as a likelihood: ESS of at least
    ``AIS_MIN_ESS`` chains and, on images, an NLL of at least 0 bits/dim (uniform
    dequantization: E_u[-log2 p(x + u)] >= -log2 P(x) >= 0 for any normalized density,
    Theis et al. 2016, Sec. 3.1; the offset puts it on the data's L levels). True when no AIS
    ran (the tail test's skip is reported on its own)."""
    if "ais_ess" not in metrics:
        return True
    below_floor = metrics.get("ais_nll_bpd", 0.0) < 0.0
    return float(metrics["ais_ess"]) >= AIS_MIN_ESS and not below_floor


FULL_COVARIANCE_MAX_DIM = 1024  # above: a diagonal base (a D x D factor per energy call)
AIS_BOUND_NATS = math.log(100.0)  # P(log Z-hat > log Z + a) <= exp(-a) = 1% (Markov)


def ais_base(points: np.ndarray, num_bins: int | None, base_std: float = 1.0
             ) -> dict[str, Any]:
    """The AIS bases' options fitted to ``points``: ``{"bases": (fitted, isotropic)}`` for
    ``likelihood.pooled_ais_log_normalizer`` on images, ``{"base_std": ...}`` on toys.

    On images (``num_bins``) the fitted base is N(mean, C + f^2 I) of the dequantized points,
    C their covariance (only its diagonal above ``FULL_COVARIANCE_MAX_DIM`` dimensions) and
    f the dequantization noise's std (2 / L) / sqrt(12), so that C + f^2 I is positive
    definite: from an isotropic base with one HMC step size the anneal cannot follow a
    target whose scales differ per direction by orders of magnitude (a background pixel
    varies only within its bin, strokes over the whole range) and ends hundreds of nats
    short at ESS 1. The isotropic N(0, base_std^2 I) is pooled with it, half the chains
    each, for a density spread wider than the data (Energy Matching's at temperature 1,
    which the fitted base misses by nats). AIS is unbiased for any base fixed before its
    chains, so fitting one to data costs nothing in bias; pooling costs at most ln 2.
    Vector data (toys) keep N(0, base_std^2 I) alone.
    """
    if num_bins is None:
        return {"base_std": base_std}
    return {"bases": (_fitted_base(points, num_bins), {"base_std": base_std})}


def _fitted_base(points: np.ndarray, num_bins: int) -> dict[str, Any]:
    """N(mean, C + f^2 I) of the dequantized ``points`` (:func:`ais_base`)."""
    x = np.asarray(points, np.float64).reshape(len(points), -1)
    floor_var = ((2.0 / num_bins) ** 2) / 12.0
    mean = x.mean(axis=0).reshape(points.shape[1:]).astype(np.float32)
    if x.shape[1] > FULL_COVARIANCE_MAX_DIM or len(x) < 2:
        std = np.sqrt(x.var(axis=0) + floor_var).reshape(points.shape[1:])
        return {"base_mean": mean, "base_std": std.astype(np.float32)}
    cov = np.cov(x, rowvar=False) + floor_var * np.eye(x.shape[1])
    return {"base_mean": mean, "base_chol": np.linalg.cholesky(cov).astype(np.float32)}


def base_label(options: dict[str, Any]) -> str:
    """The name of the AIS base of ``options`` (:func:`ais_base`'s), as records write it."""
    if "bases" in options:
        return "pooled: " + " + ".join(base_label(b) for b in options["bases"])
    if "base_chol" in options:
        return "fitted full covariance"
    return "fitted diagonal" if "base_mean" in options else "isotropic"


def ais_with(energy_fn, key, shape, options: dict[str, Any]):
    """``likelihood.pooled_ais_log_normalizer`` when ``options`` pool ``bases``, else
    ``likelihood.ais_log_normalizer`` (the options of :func:`ais_base` and the budget)."""
    if "bases" in options:
        return likelihood.pooled_ais_log_normalizer(energy_fn, key, shape, **options)
    return likelihood.ais_log_normalizer(energy_fn, key, shape, **options)


def ais_results(energy, params, x: np.ndarray, key, num_bins: int | None,
                true_log_prob=None, base_std: float = 1.0, base_points=None,
                **ais_options: Any) -> Results:
    """The tail test, then (when it passes) AIS log Z of ``energy(params, y) -> (B,)`` from
    the base :func:`ais_base` fits to ``base_points`` (default ``x``) and the AIS NLL of
    ``x`` (keys of :func:`ais_nll_metrics`)."""
    out = energy_tail_metrics(energy, params, x)
    if not out["ais_normalizable"]:
        return out
    shape = tuple(x.shape[1:])
    fitted = ais_base(x if base_points is None else base_points, num_bins, base_std)
    ais_options = dict(fitted, **ais_options)
    out["ais_base"] = base_label(ais_options)

    @jax.jit
    def run(params, x, key):
        def bound(y):
            return energy(params, y)

        log_z, info = ais_with(bound, key, shape, ais_options)
        return log_z, info, likelihood.ais_log_prob(bound, x, log_z)

    log_z, info, log_p = run(params, jnp.asarray(x), key)
    out.update({"ais_log_z": float(log_z), "ais_log_z_stderr": float(info["stderr"]),
                "ais_ess": float(info["ess"]), "ais_acceptance": float(info["acceptance"]),
                "ais_chains": int(info["log_weights"].shape[0]),
                "ais_nfe": float(info["nfe"] + info["tune_nfe"])})
    if "log_z_per_base" in info:
        out.update(ais_log_z_per_base=np.asarray(info["log_z_per_base"]).tolist(),
                   ais_ess_per_base=np.asarray(info["ess_per_base"]).tolist())
    out.update(nll_summary("ais_nll", log_p, int(np.prod(shape)), num_bins))
    out.update(nll_lower_bounds(out, int(np.prod(shape))))
    out["ais_converged"] = ais_converged(out)
    if not out["ais_converged"]:
        logging.warning(
            "eval: AIS did not converge (ESS %.3g of %d chains%s): log Z-hat is the largest "
            "few weights and the AIS NLL only an optimistic guess; read the ODE NLL",
            out["ais_ess"], out["ais_chains"],
            f", NLL {out['ais_nll_bpd']:.3g} bits/dim < 0" if out.get("ais_nll_bpd", 0) < 0
            else "")
    if true_log_prob is not None:
        true_nll = -np.asarray(true_log_prob(jnp.asarray(x)), np.float64)
        out["ais_nll_gap_nats"] = float(np.mean(-np.asarray(log_p, np.float64) - true_nll))
    return out


def nll_lower_bounds(out: Results, dim: int, prefix: str = "ais_nll") -> Results:
    """``<prefix>_{nats,bpd}_lower99`` of an AIS NLL's ``<prefix>_nats`` (and ``_bpd``):
    log Ẑ exceeds log Z by more than a = ``AIS_BOUND_NATS`` with probability at most
    exp(-a) = 1% (Markov, as Ẑ is unbiased; Grosse et al. 2015, Sec. 3), so NLL >= NLL-hat
    - a with probability 99%, whether or not the anneal converged."""
    bounds = {f"{prefix}_nats_lower99": out[f"{prefix}_nats"] - AIS_BOUND_NATS}
    if f"{prefix}_bpd" in out:
        bounds[f"{prefix}_bpd_lower99"] = (out[f"{prefix}_bpd"]
                                           - AIS_BOUND_NATS / (dim * math.log(2)))
    return bounds


def ais_nll_metrics(energy_fn, params, x: np.ndarray, key, *, sde, protocol: Protocol,
                    true_log_prob=None, **ais_options: Any) -> Results:
    """AIS NLL of the protocol points ``x`` under exp(-E(x, eps)) / Z (Gao et al. 2021).

    First :func:`energy_tail_metrics`: when exp(-E) is not normalizable (Z = inf: an
    energy bounded along rays) AIS is skipped and only ``ais_normalizable`` = False and
    the ``energy_tail_*`` numbers are returned.

    Args:
      energy_fn: ``E(params, x, t) -> (B,)``; params: its parameters.
      x: (B, ...) points from :func:`protocol_points` (the ODE's points).
      key: PRNG key of the AIS chains.
      sde: the noise process (the energy is read at t = ``sde.eps``).
      protocol: the :class:`Protocol` (units and offset).
      true_log_prob: the exact log-density of the data (toys), for the gap.
      **ais_options: ``base_points`` (the points :func:`ais_base` fits the base to;
        default ``x``), the rest passed to ``likelihood.ais_log_normalizer``.

    Returns:
      ``ais_normalizable`` and ``energy_tail_*``; ``ais_base`` (which base);
      ``ais_nll_*_lower99`` (a 99% lower bound of the NLL, :func:`nll_lower_bounds`);
      ``ais_log_z`` with ``ais_log_z_stderr``
      (over chains; meaningless when ``ais_ess`` is a few chains), ``ais_ess``,
      ``ais_acceptance``, ``ais_chains``, ``ais_converged`` (:func:`ais_converged`),
      ``ais_nfe`` (per chain, the step-size pilot's
      included), and ``ais_nll_nats`` (``ais_nll_bpd``) with ``_stderr`` over examples (log
      Z's own error is ``ais_log_z_stderr``, common to every example).
    """
    t0 = sde.eps
    base_std = max(float(sde.marginal_std(jnp.asarray(1.0))), 1.0)

    def energy(params, y):
        return energy_fn(params, y, jnp.full((y.shape[0],), t0))

    return ais_results(energy, params, x, key, protocol.num_bins, true_log_prob,
                       base_std=base_std, **ais_options)
