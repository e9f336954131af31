"""The samplers of time-invariant models (ebm_vs_score/samplers/descent.py) against exact
answers: iterates of linear recurrences on quadratics (Nesterov's accelerated rate),
adaptive stops, stationary laws of the Langevin chains, and the mixture MMD criterion of
tests/test_samplers.py for the Langevin samplers driven by an exact energy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_samplers import MMD_FACTOR, _counting, mmd2_reference, mmd2_to_mixture

from ebm_vs_score import data, samplers

KAPPA = 100.0
EIGS = jnp.linspace(1.0 / KAPPA, 1.0, 8)  # a quadratic E = x^T A x / 2, A = diag(EIGS)


def _quadratic_score(x, t):
    return -x * EIGS


def _run(method, num_steps, x0, **options):
    return jax.jit(lambda x: samplers.sample(method, jax.random.PRNGKey(0), x.shape, sde=None,
                                             score_fn=_quadratic_score, num_steps=num_steps,
                                             init=x, **options))(x0)


def _recurrence(eta, mu, carry, lam):
    """2x2 matrix of (x_{k+1}, x_k) from (x_k, x_{k-1}) for one eigenvalue lam."""
    a = eta * lam
    if carry:  # textbook Nesterov: x+ = (1 - a)((1 + mu) x - mu x_prev)
        return np.array([[(1 + mu) * (1 - a), -mu * (1 - a)], [1.0, 0.0]])
    return np.array([[1 - a * (1 + mu), a * mu], [1.0, 0.0]])  # the EqM code's form


def _exact_iterate(x0, k, eta, mu, carry):
    out = []
    for lam, x in zip(np.asarray(EIGS, np.float64), np.asarray(x0, np.float64).T, strict=True):
        m = np.linalg.matrix_power(_recurrence(eta, mu, carry, lam), k)
        out.append(m[0, 0] * x + m[0, 1] * x)  # x_{-1} = x_0 (no momentum at the start)
    return np.stack(out, -1)


@pytest.mark.parametrize("form", ["nesterov", "eqm"])
def test_nag_iterates_equal_the_exact_linear_recurrence(form):
    x0 = jax.random.normal(jax.random.PRNGKey(1), (4, 8))
    mu = (np.sqrt(KAPPA) - 1) / (np.sqrt(KAPPA) + 1) if form == "nesterov" else 0.3
    x, _ = _run("nag", 60, x0, step_size=1.0, mu=mu, nag_form=form)
    np.testing.assert_allclose(x, _exact_iterate(x0, 60, 1.0, mu, form == "nesterov"),
                               rtol=1e-3, atol=1e-6)


def _log_rate(method, **options):
    """Per-step log contraction of ||x_k|| between k = 100 and 200."""
    x0 = jnp.ones((1, 8))
    norms = [float(jnp.linalg.norm(_run(method, k, x0, **options)[0])) for k in (100, 200)]
    return np.log(norms[1] / norms[0]) / 100


def test_nesterov_reaches_the_quadratic_minimum_at_the_textbook_rate():
    """eta = 1/L, mu = (sqrt(kappa) - 1) / (sqrt(kappa) + 1): ||x_k|| ~ k (1 - 1/sqrt(kappa))^k
    (a double root at lambda = m), log-rate log(0.9) + log(2)/100 over k = 100..200; GD at
    the same step contracts at 1 - 1/kappa."""
    mu = (np.sqrt(KAPPA) - 1) / (np.sqrt(KAPPA) + 1)
    textbook = np.log(1 - 1 / np.sqrt(KAPPA)) + np.log(2.0) / 100
    assert abs(_log_rate("nag", step_size=1.0, mu=mu) - textbook) < 2e-3
    assert abs(_log_rate("gd", step_size=1.0) - np.log(1 - 1 / KAPPA)) < 1e-3


def test_the_eqm_code_recurrence_is_not_accelerated():
    """The EqM code's 'ngd' (look-ahead gradient, no momentum carried) contracts at its
    recurrence's spectral radius, which for small eta lambda is gradient descent's."""
    radius = max(max(abs(np.linalg.eigvals(_recurrence(1.0, 0.3, False, lam))))
                 for lam in np.asarray(EIGS, np.float64))
    rate = _log_rate("nag", step_size=1.0, mu=0.3, nag_form="eqm")
    assert abs(rate - np.log(radius)) < 1e-3
    assert abs(rate - np.log(1 - 1 / KAPPA)) < 2e-3


def test_adaptive_stop_counts_each_examples_evaluations():
    """GD on E = a ||x||^2 / 2: ||f_k|| = a ||x_0|| (1 - eta a)^k, so an example stops after
    k* + 1 evaluations, k* the first k with ||f_k|| < tol; the loop runs max_i of them."""
    a, eta, tol = 2.0, 0.1, 1e-3
    x0 = jnp.asarray([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0004], [-20.0, 0.0]])
    out = jax.jit(lambda x: samplers.sample(
        "gd", jax.random.PRNGKey(0), x.shape, sde=None, score_fn=lambda y, t: -a * y,
        num_steps=1000, step_size=eta, tol=tol, init=x))(x0)
    x, info = out
    norm0 = a * np.linalg.norm(np.asarray(x0, np.float64), axis=-1)
    k_star = np.maximum(np.ceil(np.log(tol / norm0) / np.log(1 - eta * a)), 0).astype(int)
    np.testing.assert_array_equal(info["nfe_per_example"], k_star + 1)
    assert int(info["nfe"]) == int(k_star.max() + 1) and float(info["converged"]) == 1.0
    np.testing.assert_allclose(x, np.asarray(x0) * (1 - eta * a) ** k_star[:, None], rtol=1e-4)


def test_examples_that_never_reach_tol_run_every_step():
    _, info = samplers.sample("nag", jax.random.PRNGKey(0), (3, 2), sde=None,
                              score_fn=lambda y, t: -y, num_steps=7, step_size=0.01, tol=1e-9)
    assert int(info["nfe"]) == 7 and int(info["nfe_min"]) == 7
    assert float(info["converged"]) == 0.0


# ----------------------------------------------------------------------------------------
# Langevin with a temperature schedule


def _gauss_energy(x, t):
    return 0.5 * jnp.sum(x**2, -1)


def _gauss_score(x, t):
    return -x


@pytest.mark.parametrize("method", ["langevin", "langevin_mh"])
def test_cold_steps_are_plain_descent(method):
    """eps(t) = 0 before the cutoff: 50 steps of dt = 0.01 from t = 0 are x (1 - dt)^50."""
    x0 = jax.random.normal(jax.random.PRNGKey(2), (16, 2))
    x, info = samplers.sample(method, jax.random.PRNGKey(3), x0.shape, sde=None,
                              score_fn=_gauss_score, energy_fn=_gauss_energy, num_steps=50,
                              step_size=0.01, eps_max=1.0, time_cutoff=0.8, init=x0)
    np.testing.assert_allclose(x, x0 * 0.99**50, rtol=1e-5)
    if method == "langevin_mh":
        assert float(info["acceptance"]) == 1.0


@pytest.mark.parametrize("method,var", [("langevin", 0.2 / 0.36), ("langevin_mh", 0.5)])
def test_stationary_variance_at_constant_temperature(method, var):
    """V = ||x||^2 / 2 at eps = 0.5 (t_start >= 1): the Euler chain x (1 - dt) + sqrt(2 dt
    eps) z with dt = 0.2 has variance 2 dt eps / (1 - (1 - dt)^2) = 0.556; the MH-corrected
    chain samples exp(-V / eps), variance 0.5. Within 4 standard errors."""
    x, info = jax.jit(lambda k: samplers.sample(
        method, k, (4000, 2), sde=None, score_fn=_gauss_score, energy_fn=_gauss_energy,
        num_steps=300, step_size=0.2, eps_max=0.5, t_start=1.0))(jax.random.PRNGKey(4))
    got = float(jnp.var(x))
    assert abs(got - var) < 4 * var * np.sqrt(2 / x.size), got
    if method == "langevin_mh":
        assert 0.5 < float(info["acceptance"]) < 1.0


MIX = data.eight_gaussians()


@pytest.mark.parametrize("method,dt", [("langevin", 1e-3), ("langevin_mh", 5e-3)])
def test_langevin_samplers_reproduce_the_mixture(method, dt):
    """Driven by the exact energy -log p of 8gaussians at temperature 1, the samples pass
    tests/test_samplers.py's criterion MMD^2 < 3 x the expectation for exact samples."""
    n = 2000
    x, _ = jax.jit(lambda k: samplers.sample(
        method, k, (n, 2), sde=None, score_fn=lambda y, t: MIX.score(y),
        energy_fn=lambda y, t: -MIX.log_prob(y), num_steps=600, step_size=dt, eps_max=1.0,
        t_start=1.0))(jax.random.PRNGKey(1))
    ratio = float(mmd2_to_mixture(x, MIX)) / mmd2_reference(MIX, n)
    assert ratio < MMD_FACTOR, ratio


# ----------------------------------------------------------------------------------------
# NFE, program size, refusals


@pytest.mark.parametrize("method,options,expected", [
    ("gd", {}, 9), ("nag", {"tol": 0.5}, None), ("langevin", {}, 9), ("langevin_mh", {}, 10)])
def test_nfe_counts_network_evaluations(method, options, expected):
    counter = {"score": 0, "energy": 0}
    score = _counting(_gauss_score, counter, "score")
    energy = _counting(_gauss_energy, counter, "energy")
    _, info = jax.jit(lambda k: samplers.sample(
        method, k, (8, 2), sde=None, score_fn=score, energy_fn=energy, num_steps=9,
        step_size=0.1, **options))(jax.random.PRNGKey(0))
    jax.effects_barrier()
    assert int(info["nfe"]) == counter["score"] + counter["energy"]
    if expected is not None:
        assert int(info["nfe"]) == expected


def _program_size(method, num_steps, **options):
    import re

    fn = jax.jit(lambda k: samplers.sample(method, k, (16, 2), sde=None,
                                           score_fn=_gauss_score, energy_fn=_gauss_energy,
                                           num_steps=num_steps, **options))
    text = fn.lower(jax.random.PRNGKey(0)).as_text()
    return len(re.sub(r"\d+(\.\d*)?([eE][-+]?\d+)?", "#", text))


@pytest.mark.parametrize("method,options", [("gd", {}), ("nag", {"tol": 0.1}),
                                            ("langevin_mh", {})])
def test_program_size_does_not_grow_with_num_steps(method, options):
    assert _program_size(method, 10, **options) == _program_size(method, 1000, **options)


def test_mala_on_the_implicit_field_is_refused_in_one_sentence():
    with pytest.raises(ValueError) as e:
        samplers.sample("langevin_mh", jax.random.PRNGKey(0), (4, 2), sde=None,
                        score_fn=_gauss_score, num_steps=3)
    message = str(e.value)
    assert "implicit EqM field f(x) has no energy" in message and message.count(". ") == 0


def test_time_conditional_samplers_are_refused_without_an_sde():
    with pytest.raises(ValueError, match="time-invariant.*use one of \\['gd', 'nag'"):
        samplers.sample("pc", jax.random.PRNGKey(0), (4, 2), sde=None,
                        score_fn=_gauss_score, num_steps=3)


def test_option_ranges_are_checked():
    with pytest.raises(ValueError, match="mu=1.5 must lie in \\[0, 1\\)"):
        samplers.check_options("nag", 3, {"mu": 1.5})
    with pytest.raises(ValueError, match="nag_form='adam' is not valid"):
        samplers.check_options("nag", 3, {"nag_form": "adam"})
    with pytest.raises(ValueError, match="tol=-1"):
        samplers.check_options("gd", 3, {"tol": -1.0})


def test_descent_samplers_are_refused_for_a_time_conditional_model():
    from ebm_vs_score.sde import VPSDE

    with pytest.raises(ValueError, match="descends a time-invariant field"):
        samplers.sample("gd", jax.random.PRNGKey(0), (4, 2), sde=VPSDE(),
                        score_fn=_gauss_score, num_steps=3)


def test_held_pixels_stay_and_hidden_ones_descend():
    """inpaint.held: descent on E = ||x - m||^2 / 2 moves only the hidden coordinates (to m)
    and the energy is read at the merged point."""
    from ebm_vs_score import compose, inpaint

    m = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
    model = compose.Component(lambda x, t: m - x, lambda x, t: 0.5 * jnp.sum((x - m) ** 2, -1))
    known, mask = jnp.asarray([[9.0, 9.0, 0.0, 0.0]]), jnp.asarray([1.0, 1.0, 0.0, 0.0])
    cond = inpaint.held(model, known, mask)
    x, _ = samplers.sample("gd", jax.random.PRNGKey(0), (1, 4), sde=None, score_fn=cond.score,
                           energy_fn=cond.energy, num_steps=200, step_size=0.1,
                           init=jnp.asarray([[9.0, 9.0, -5.0, 7.0]]))
    np.testing.assert_allclose(x, [[9.0, 9.0, 3.0, 4.0]], atol=1e-4)
    np.testing.assert_allclose(cond.energy(jnp.zeros((1, 4)), None),
                               0.5 * ((9 - 1) ** 2 + (9 - 2) ** 2 + 9 + 16))


def _nonlinear_score(x, t):
    """A non-quadratic field (a tanh-bent quadratic), so prefixes are not a closed form."""
    return -jnp.tanh(x * EIGS) - 0.1 * x


@pytest.mark.parametrize("method,options", [("gd", {"step_size": 0.5}),
                                            ("nag", {"nag_form": "nesterov", "mu": 0.3}),
                                            ("nag", {"nag_form": "eqm", "mu": 0.3})])
def test_snapshots_equal_separate_runs_of_each_length(method, options):
    """Row i of sample_snapshots (one chain) is the sampler run for checkpoints[i] steps from
    the same key: same samples to float tolerance, same NFE and final ||f||."""
    key, shape, marks = jax.random.PRNGKey(3), (5, 8), (25, 4, 10)
    xs, info = jax.jit(lambda k: samplers.sample_snapshots(
        method, k, shape, score_fn=_nonlinear_score, checkpoints=marks, **options))(key)
    assert xs.shape == (3,) + shape
    for i, n in enumerate(sorted(marks)):
        x, one = jax.jit(lambda k, n=n: samplers.sample(
            method, k, shape, sde=None, score_fn=_nonlinear_score, num_steps=n,
            **options))(key)
        np.testing.assert_allclose(xs[i], x, rtol=1e-6, atol=1e-6)
        assert int(info["nfe"][i]) == int(one["nfe"]) == n
        np.testing.assert_allclose(info["final_grad_norm"][i], one["final_grad_norm"],
                                   rtol=1e-6)
    assert not np.allclose(xs[0], xs[1])  # the chain moved between checkpoints


def test_snapshots_are_refused_where_a_prefix_is_not_the_shorter_chain():
    """Adaptive stops, Langevin and empty checkpoint lists: one sentence each."""
    kw = dict(score_fn=_nonlinear_score, checkpoints=(5, 10))
    with pytest.raises(ValueError, match="tol=0"):
        samplers.sample_snapshots("gd", jax.random.PRNGKey(0), (2, 8), tol=1.0, **kw)
    with pytest.raises(ValueError, match="no step-count snapshots"):
        samplers.sample_snapshots("langevin", jax.random.PRNGKey(0), (2, 8), **kw)
    with pytest.raises(ValueError, match="positive step counts"):
        samplers.sample_snapshots("gd", jax.random.PRNGKey(0), (2, 8),
                                  score_fn=_nonlinear_score, checkpoints=())
