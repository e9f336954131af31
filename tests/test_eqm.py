"""Equilibrium Matching against exact answers (ebm_vs_score/eqm.py).

The optimal field f*(y) = E[(eps - x) c(gamma) | x_gamma = y] of mixture data is checked
against SciPy's adaptive quadrature (a second implementation) and, by Monte Carlo over the
path, against its defining property (the residual of a conditional expectation is
orthogonal to every function of y); its fixed points lie on the data as the component
width goes to 0; a small trained field approaches it; the explicit forms' fields are the
gradients of their energies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

from ebm_vs_score import data, eqm, models, samplers

MIX = data.eight_gaussians()


def test_c_gamma_is_constant_then_falls_to_zero_at_the_data():
    """c = 4 min(1, (1 - gamma) / 0.2) (the EqM code's get_ct)."""
    gamma = jnp.asarray([0.0, 0.5, 0.8, 0.9, 0.95, 1.0])
    np.testing.assert_allclose(eqm.c_gamma(gamma), [4, 4, 4, 2, 1, 0], atol=1e-6)


def test_path_target_is_eps_minus_x_times_c():
    x = jnp.full((4, 2), 0.5)
    y, target, gamma = eqm.eqm_path(jax.random.PRNGKey(0), x)
    eps = (y - gamma[:, None] * x) / (1 - gamma[:, None])
    np.testing.assert_allclose(target, (eps - x) * eqm.c_gamma(gamma)[:, None], rtol=1e-4)


def _quad_reference(y, mix) -> np.ndarray:
    """f*(y) by scipy.integrate.quad over gamma in float64 (break point at 0.8)."""
    w, m, s = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.stds))

    def parts(g):
        v = g**2 * s**2 + (1 - g) ** 2
        centred = y[None] - g * m
        like = w * np.exp(-0.5 * np.sum(centred**2, -1) / v) / (2 * np.pi * v)
        mean = -m + (((1 - g) - g * s**2) / v)[:, None] * centred
        return like, 4 * min(1.0, (1 - g) / 0.2) * (like[:, None] * mean).sum(0)

    opts = dict(points=[0.8], limit=200, epsabs=0, epsrel=1e-10)
    z = integrate.quad(lambda g: parts(g)[0].sum(), 0, 1, **opts)[0]
    return np.array([integrate.quad(lambda g, d=d: parts(g)[1][d], 0, 1, **opts)[0]
                     for d in range(2)]) / z


def test_optimal_field_matches_adaptive_quadrature():
    y = np.array([[0.0, 0.0], [1.0, 0.5], [3.0, -1.0], [0.5, 2.0], [1.39, 0.02]])
    got = eqm.optimal_field(jnp.asarray(y, jnp.float32), MIX.weights, MIX.means, MIX.stds)
    want = np.stack([_quad_reference(p, MIX) for p in y])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _path_residuals(field, n=40_000, seed=0):
    x = MIX.sample(jax.random.PRNGKey(seed), n)
    y, target, _ = eqm.eqm_path(jax.random.PRNGKey(seed + 1), x)
    return y, target - field(y)


def _optimal(y):
    return eqm.optimal_field(y, MIX.weights, MIX.means, MIX.stds, num_nodes=256)


def _orthogonality_z(y, r, f):
    """z-scores of E[r . h(y)] for h = f*, y, 1 (each should be 0 for f = f*)."""
    feats = [jnp.sum(r * f, -1), r[:, 0] * y[:, 0], r[:, 1] * y[:, 1], r[:, 0], r[:, 1]]
    return [float(jnp.mean(v) / (jnp.std(v) / np.sqrt(v.shape[0]))) for v in feats]


def test_optimal_field_is_the_conditional_expectation_by_monte_carlo():
    """Residuals target - f*(y) are orthogonal to functions of y (|z| < 4), while a field
    off by 0.3 y fails the same check: f* minimizes the EqM loss."""
    y, r = _path_residuals(_optimal)
    f = _optimal(y)
    assert max(abs(z) for z in _orthogonality_z(y, r, f)) < 4.0
    r_bad = r - 0.3 * y
    assert max(abs(z) for z in _orthogonality_z(y, r_bad, f)) > 8.0
    assert float(jnp.mean(r**2)) < float(jnp.mean(r_bad**2))


@pytest.mark.parametrize("radius", [2.0, 0.5])
def test_fixed_points_approach_the_data_as_components_narrow(radius):
    """For one component N(mu, s^2 I) the minimum of the exact EqM landscape found by NAG
    sits at mu (1 + k s) with k about 0.7 (it moves onto the data as s -> 0), and
    ||f*(mu)|| falls linearly with s: point masses are exact minima (Wang & Du, Thm. 1)."""
    mu = jnp.asarray([[radius, 0.0]])
    shifts, norms = [], []
    for s in (0.1, 0.01):
        stds = jnp.asarray([s])
        score = lambda x, t, stds=stds: -eqm.optimal_field(  # noqa: E731
            x, jnp.ones(1), mu, stds, num_nodes=4096)
        x, info = samplers.sample("nag", jax.random.PRNGKey(5), (8, 2), sde=None,
                                  score_fn=score, num_steps=3000, step_size=0.01, tol=1e-5)
        assert float(info["converged"]) == 1.0
        shifts.append(float(jnp.max(jnp.linalg.norm(x - mu, axis=-1))) / radius)
        norms.append(float(jnp.linalg.norm(-score(mu, None))))
    assert shifts[1] < 0.01 and 0.3 < shifts[0] / shifts[1] / 10 < 1.5, shifts
    assert norms[1] < 0.2 * norms[0], norms


def test_nag_on_exact_field_keeps_mode_weights_and_lands_near_modes():
    """NAG with adaptive stops on the exact field of a mixture with weights (0.5, 0.3, 0.2)
    puts each mode's share of the samples within 0.05 of its weight; every sample stops
    within 3 component stds of a mean (the landscape's minima; the within-mode spread is
    not reproduced: descent collapses each mode)."""
    mix = data.GaussianMixture(weights=jnp.asarray([0.5, 0.3, 0.2]),
                               means=jnp.asarray([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]),
                               stds=jnp.asarray([0.1, 0.1, 0.1]))
    score = lambda x, t: -eqm.optimal_field(x, mix.weights, mix.means, mix.stds,  # noqa: E731
                                            num_nodes=256)
    x, info = jax.jit(lambda k: samplers.sample("nag", k, (600, 2), sde=None, score_fn=score,
                                                num_steps=400, step_size=0.02, tol=1e-3))(
        jax.random.PRNGKey(5))
    dist = jnp.linalg.norm(x[:, None] - mix.means[None], axis=-1)
    share = np.bincount(np.asarray(jnp.argmin(dist, -1)), minlength=3) / x.shape[0]
    np.testing.assert_allclose(share, mix.weights, atol=0.05)
    assert float(jnp.max(jnp.min(dist, -1))) < 0.3
    assert float(info["converged"]) == 1.0 and int(info["nfe_max"]) < 400


# ----------------------------------------------------------------------------------------
# Energy forms on a small MLP


def _mlp(form):
    net = models.MLP(hidden=(16, 16), out="scalar" if form == "scalar" else "vector",
                     zero_init_output=False)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    return net, params


@pytest.mark.parametrize("form", eqm.ENERGY_FORMS)
def test_field_is_the_gradient_of_the_energy_and_ignores_time(form):
    net, params = _mlp(form)
    fns = eqm.energy_fns(net, form)
    field = eqm.field_of(fns)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    energy = lambda y: fns.energy(params, y, jnp.zeros((y.shape[0],)))  # noqa: E731
    h = 1e-3
    fd = jnp.stack([(energy(x + h * e) - energy(x - h * e)) / (2 * h)
                    for e in jnp.eye(2)], axis=-1)
    np.testing.assert_allclose(field(params, x), fd, rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(fns.energy(params, x, jnp.full((5,), 0.7)),
                               fns.energy(params, x, jnp.zeros((5,))))


def test_forms_are_the_released_codes_potentials_negated():
    """E_dot = -<F(x), x>, E_l2 = ||F(x)||^2 / 2 with F the network at time input 0."""
    net, params = _mlp("dot")
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 2))
    f = net.apply({"params": params}, x, jnp.zeros((3,)))
    np.testing.assert_allclose(eqm.energy_fn(net, "dot")(params, x), -jnp.sum(f * x, -1),
                               rtol=1e-6)
    np.testing.assert_allclose(eqm.energy_fn(net, "l2")(params, x), 0.5 * jnp.sum(f**2, -1),
                               rtol=1e-6)


def test_scalar_form_has_a_restoring_force():
    """E = c_max ||x||^2 / 2 + N(x) grows along rays and its score points back."""
    net, params = _mlp("scalar")
    fns = eqm.energy_fns(net, "scalar")
    x = jax.random.normal(jax.random.PRNGKey(3), (16, 2))
    t = jnp.zeros((16,))
    energies = jnp.stack([fns.energy(params, lam * x, t) for lam in (1.0, 3.0, 10.0)])
    assert bool(jnp.all(jnp.diff(energies, axis=0) > 0))
    radial = jnp.sum(fns.score(params, 10.0 * x, t) * x, -1)
    assert bool(jnp.all(radial < 0))


def test_examples_do_not_interact():
    net, params = _mlp("dot")
    score = eqm.energy_fns(net, "dot").score
    x = jax.random.normal(jax.random.PRNGKey(4), (4, 2))
    jac = jax.jacfwd(lambda y: score(params, y, jnp.zeros((4,)))[0])(x)
    assert float(jnp.max(jnp.abs(jac[:, 1:]))) == 0.0


def test_form_must_fit_the_network():
    with pytest.raises(ValueError, match="'scalar' does not fit a vector network"):
        eqm.check_form("scalar", scalar_network=False)
    with pytest.raises(ValueError, match="valid; choose one of"):
        eqm.check_form("mean", scalar_network=False)


# ----------------------------------------------------------------------------------------
# A trained field approaches the exact one


def train_toy_field(form: str, steps: int, batch: int = 2048, seed: int = 0):
    """EqM on 8gaussians with a 3x128 MLP (time input zeroed); returns (field, params)."""
    net = models.MLP(hidden=(128, 128, 128), out="scalar" if form == "scalar" else "vector",
                     zero_init_output=form != "l2")
    fns = eqm.implicit_fns(net) if form == "implicit" else eqm.energy_fns(net, form)
    field = eqm.field_of(fns)
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    loss_fn = eqm.eqm_loss(field)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
        optax.warmup_cosine_decay_schedule(0.0, 2e-3, 100, steps, 1e-5)))

    @jax.jit
    def step(carry, k):
        params, opt = carry
        kx, kl = jax.random.split(k)
        grads = jax.grad(lambda p: loss_fn(p, {"x": MIX.sample(kx, batch)}, kl)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt)

    carry = (params, tx.init(params))
    for i in range(steps):
        carry = step(carry, jax.random.PRNGKey(1000 * seed + i + 1))
    return field, carry[0]


def field_error(field, params, n: int = 2000) -> float:
    """sqrt(E ||f - f*||^2 / E ||f*||^2) over the path's points x_gamma."""
    y, _, _ = eqm.eqm_path(jax.random.PRNGKey(98), MIX.sample(jax.random.PRNGKey(99), n))
    exact = eqm.optimal_field(y, MIX.weights, MIX.means, MIX.stds, num_nodes=512)
    return float(jnp.sqrt(jnp.mean(jnp.sum((field(params, y) - exact) ** 2, -1))
                          / jnp.mean(jnp.sum(exact**2, -1))))


@pytest.mark.slow
def test_trained_toy_field_approaches_the_exact_field():
    """4000 Adam steps (batch 2048) bring the implicit field within 20% (relative L2 over
    the path) of f*; measured 0.098 (docs/notes/eqm.md). The zero field is at 100%."""
    field, params = train_toy_field("implicit", 4000)
    assert field_error(field, params) < 0.2
