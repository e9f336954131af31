"""Metrics of the time-invariant models: EqM's field, EqM-E and Energy Matching's energies.

They have no noise levels, so the time-conditional metrics change shape:

* NAsym / Asym of the field (Chao et al. 2023, eq. 6-7; DESIGN.md definitions) on the EqM
  path's points x_gamma = gamma x + (1 - gamma) eps at ``GAMMAS`` (gamma = 1: the test data
  themselves), in place of the noise levels t. How far from conservative an unconstrained
  time-invariant field drifts is the implicit ``eqm`` row; the energies are 0 by
  construction.
* AIS NLL (Neal 2001; ``likelihood.ais_log_normalizer``) of the energy's Boltzmann
  density p(x) = exp(-E(x)) / Z at temperature 1, on the same dequantized points and in
  the same units as the other families' NLLs (``nll.Protocol``). It measures the
  density the energy defines; it is NOT the law of the samples, which gradient descent
  draws near the energy's minima (and Energy Matching's Langevin at temperature eps_max).
  No ODE likelihood: no probability-flow ODE exists without a noise process.
* For mixture toys and EqM (eq. 4's minimizer is known): the relative L2 distance of the
  learned field to the exact optimal field ``eqm.optimal_field`` over the path's points.
* :func:`nfe_sweep`: sample quality against NFE for gd, nag (textbook and the EqM code's
  form) at several step counts, and for adaptive stops at ``tol``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score import conservativeness, eqm, settings
from ebm_vs_score.evaluate import nll

Results = dict[str, Any]
GAMMAS = (0.25, 0.5, 0.8, 0.95, 1.0)
AIS_TARGET = "exp(-E(x)) / Z, the energy's Boltzmann density at temperature 1"


def _zeros(x):
    return jnp.zeros((x.shape[0],), jnp.float32)


def path_asymmetry(score_fn, params, x: np.ndarray, key, *, num_probes: int,
                   gammas=GAMMAS) -> Results:
    """Asym / NAsym of the field at x_gamma for each gamma (module docstring).

    Returns ``asym``, ``nasym`` (means over the gammas) and ``asym_per_gamma``,
    ``nasym_per_gamma`` with their ``gamma_levels``.
    """
    @jax.jit
    def run(params, x, key):
        field = lambda y: score_fn(params, y, _zeros(y))  # noqa: E731  (-f: same Asym)

        def level(args):  # one gamma at a time (lax.map): one compiled copy of the field
            g, k = args
            k_noise, k_probe = jax.random.split(k)
            eps = jax.random.normal(k_noise, x.shape, x.dtype)
            asym, nasym = conservativeness.asymmetry(field, g * x + (1.0 - g) * eps,
                                                     key=k_probe, num_probes=int(num_probes))
            return jnp.mean(asym), jnp.mean(nasym)

        g = jnp.asarray(gammas, jnp.float32)
        return jax.lax.map(level, (g, jax.random.split(key, len(gammas))))

    per = np.stack([np.asarray(v) for v in run(params, jnp.asarray(x), key)], axis=-1)
    return {"asym": float(per[:, 0].mean()), "nasym": float(per[:, 1].mean()),
            "asym_per_gamma": per[:, 0].tolist(), "nasym_per_gamma": per[:, 1].tolist(),
            "gamma_levels": list(gammas)}


def ais_nll_metrics(energy_fn, params, x: np.ndarray, key, *, protocol: nll.Protocol,
                    true_log_prob=None, **ais_options: Any) -> Results:
    """AIS NLL of the protocol points under exp(-E(x)) / Z (module docstring).

    Keys as ``nll.ais_nll_metrics`` (the tail test ``ais_normalizable`` first; then
    ``ais_log_z`` with its standard error, ``ais_ess``, ``ais_acceptance``, ``ais_nll_nats``
    / ``ais_nll_bpd`` with standard errors over examples, ``ais_nll_gap_nats`` on toys) and
    ``ais_target`` saying which density was scored. The AIS base is ``nll.ais_base``'s
    (fitted to ``base_points`` on images, N(0, I) on toys).
    """

    def energy(params, y):
        return energy_fn(params, y, _zeros(y))

    out = nll.ais_results(energy, params, x, key, protocol.num_bins, true_log_prob, base_std=1.0,
                          **ais_options)
    return dict(out, ais_target=AIS_TARGET)


def exact_field_error(score_fn, params, mixture, key, *, c_max: float, interp: float,
                      n: int = 2000) -> Results:
    """``eqm_field_rel_error``: sqrt(E||f - f*||^2 / E||f*||^2) over x_gamma (mixture toys)."""
    k_data, k_path = jax.random.split(key)
    y, _, _ = eqm.eqm_path(k_path, mixture.sample(k_data, n), c_max, interp)
    exact = eqm.optimal_field(y, mixture.weights, mixture.means, mixture.stds, c_max=c_max,
                              interp=interp, num_nodes=512)
    learned = -jax.jit(score_fn)(params, y, _zeros(y))
    err = jnp.sqrt(jnp.mean(jnp.sum((learned - exact) ** 2, -1)) / jnp.mean(jnp.sum(exact**2, -1)))
    return {"eqm_field_rel_error": float(err)}


# ----------------------------------------------------------------------------------------
# Sample quality against NFE


# The fixed-step forms of the sweep: (label, sampling.* fields).
FIXED_FORMS = (("gd", {"method": "gd"}),
               ("nag", {"method": "nag", "nag_form": "nesterov"}),
               ("nag_eqm", {"method": "nag", "nag_form": "eqm"}))


def sweep_settings(steps, tols) -> list[tuple[str, dict[str, Any]]]:
    """(label, sampling.* overrides) of the sweep: gd, nag and nag in the EqM code's form
    at each distinct step count; nag with each adaptive ``tol`` at the largest count."""
    specs = []
    for n in dict.fromkeys(int(n) for n in steps):
        for label, fields in FIXED_FORMS:
            specs.append((f"{label}_{n}", dict(fields, num_steps=int(n), tol=0.0)))
    for tol in tols:
        specs.append((f"nag_tol{tol:g}", {"method": "nag", "nag_form": "nesterov",
                                          "num_steps": int(max(steps)), "tol": float(tol)}))
    return specs


def _with(s: settings.Settings, fields: dict[str, Any]) -> settings.Settings:
    return settings.override(s, {f"sampling.{k}": v for k, v in fields.items()})


def nfe_sweep(s: settings.Settings, measure_steps: Callable[[Any, Any, tuple], list[Results]],
              measure: Callable[[Any, Any], Results], key, steps, tols) -> list[Results]:
    """One row per :func:`sweep_settings` entry, in its order, with the entry's fields.

    A fixed-step form's rows come from ONE chain per example run for the most steps and
    measured after each step count (``measure_steps(settings, key, sorted_steps)``: one
    result per count; gd's and nag's step size and momentum do not depend on the count, so
    the shorter chains are its prefixes); an adaptive row is ``measure(settings, key)``.
    Every row draws from ``key``: the same starting noise, so the differences the claims
    read within a run (nag_eqm against gd at n steps, an adaptive stop against the same
    sampler at its fixed count) are paired. NFE: 3 max(steps) + the adaptive rows', not
    3 sum(steps).
    """
    counts = sorted({int(n) for n in steps})
    results = {}
    for label, fields in FIXED_FORMS:
        entry = _with(s, dict(fields, num_steps=counts[-1], tol=0.0))
        results.update({f"{label}_{n}": r
                        for n, r in zip(counts, measure_steps(entry, key, tuple(counts)),
                                        strict=True)})
    specs = sweep_settings(steps, tols)
    for label, fields in specs:
        if label not in results:
            results[label] = measure(_with(s, fields), key)
    return [{"sampler": label, **fields, **results[label]} for label, fields in specs]
