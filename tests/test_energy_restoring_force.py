"""Every energy family has a restoring force (DESIGN.md rule 2; issue #12).

Far from the data the true perturbed-data energy grows like ``||x||^2 / (2 var_t)`` and its
score ``-grad E`` points back towards the data. Along rays ``lambda x_t`` (x_t a sample of
the marginal at time t, so ``lambda = 1`` is the data shell) a trained energy must
  (a) increase with lambda for lambda in (1, 1.5, 3, 10),
  (b) grow from lambda = 3 to 10 by at least a quarter of what the Gaussian energy
      ``c_in^2 ||x||^2 / 2`` of N(0, I / c_in^2) grows there (the right order, not merely
      "not flat"), and
  (c) have a score with a negative radial component, ``-grad E(lambda x) . x < 0``, at
      lambda = 3 and 10.
Salimans & Ho's model C as published (``model.energy_base='none'``: GroupNorm ->
mean-pool -> Dense(1) head, no base term) is bounded along rays and fails; the default
``'gaussian'`` base term restores the property.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ebm_vs_score import builders, config_base, data, settings
from ebm_vs_score import parameterization as param_lib

LAMBDAS = (1.0, 1.5, 3.0, 10.0)


def ray_probe(model, params, x0, t, key, sigma_data):
    """Energies ``E(lambda x_t)`` (len(LAMBDAS), B), radial scores ``s(lambda x_t) . x_t``
    (len(LAMBDAS), B) and the Gaussian energy gain from lambda = 3 to 10 (B,).

    ``x_t = alpha(t) x0 + sigma(t) eps`` is drawn from the perturbation kernel at time t.
    """

    @jax.jit
    def probe(params, x0):
        tt = jnp.full((x0.shape[0],), t, jnp.float32)
        mean, std = model.sde.marginal_prob(x0, tt)
        x = mean + std.reshape((-1,) + (1,) * (x0.ndim - 1)) * jax.random.normal(key, x0.shape)
        flat = x.reshape(x.shape[0], -1)
        rays = jnp.concatenate([lam * x for lam in LAMBDAS])  # one batch for all lambdas
        t_rays = jnp.tile(tt, len(LAMBDAS))
        energies = model.fns.energy(params, rays, t_rays).reshape(len(LAMBDAS), -1)
        scores = model.fns.score(params, rays, t_rays).reshape((len(LAMBDAS),) + flat.shape)
        radial = jnp.sum(scores * flat[None], axis=-1)
        c_in2 = param_lib.preconditioning(model.sde, tt, sigma_data)[0] ** 2
        gain = 0.5 * c_in2 * (LAMBDAS[3] ** 2 - LAMBDAS[2] ** 2) * jnp.sum(flat**2, -1)
        return energies, radial, gain

    return tuple(np.asarray(a) for a in probe(params, x0))


def restoring_force_violations(model, params, x0, t, sigma_data) -> list[str]:
    """The statements (a)-(c) of the module docstring that fail, as messages."""
    energies, radial, gain = ray_probe(model, params, x0, t, jax.random.PRNGKey(3), sigma_data)
    out = []
    if not np.all(np.diff(energies, axis=0) > 0):
        out.append(f"E(lambda x) not increasing in lambda={LAMBDAS} at t={t}: {energies.T}")
    if not np.all(energies[3] - energies[2] >= 0.25 * gain):
        out.append(f"E(10x) - E(3x) = {energies[3] - energies[2]} < 1/4 of Gaussian {gain}")
    if not np.all(radial[2:] < 0):
        out.append(f"radial score -grad E . x not < 0 at lambda=3, 10, t={t}: {radial[2:].T}")
    return out


def _train(config, x_train, steps, seed=0):
    """A short Adam run of the config's objective (DSM) on ``x_train``; returns params."""
    s = settings.from_config(config)
    model = builders.build_model(s)
    loss_fn = builders.build_loss_fn(s, model)
    params = builders.init_params(model, jax.random.PRNGKey(seed))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-3))
    x_train = jnp.asarray(x_train)
    batch = int(config.training.batch_size)

    def step(carry, i):
        params, opt_state = carry
        k_data, k_loss = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed + 1), i))
        x = x_train[jax.random.randint(k_data, (batch,), 0, x_train.shape[0])]
        grads, _ = jax.grad(loss_fn, has_aux=True)(params, {"x": x}, k_loss)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), jnp.arange(steps))[0][0])
    return model, run(params)


def _toy(family, energy_base="gaussian", steps=600):
    config = config_base.get_config("toy", family)
    config.model.energy_base = energy_base
    config.model.hidden = (64, 64)
    config.training.batch_size = 256
    x = data.sample_toy("8gaussians", 0, 4096)
    return _train(config, x, steps), jnp.asarray(x[:16]), config.model.sigma_data


def _digits(energy_base="gaussian", steps=100):
    config = config_base.get_config("digits", "resnet_energy")
    config.model.energy_base = energy_base
    config.training.batch_size = 32
    x, _ = data.load_digits_split("train")
    return _train(config, x, steps), jnp.asarray(x[:8]), config.model.sigma_data


@pytest.mark.parametrize("family", ["resnet_energy", "energy"])
def test_trained_toy_energy_restores(family):
    """C-MLP (scalar energy + Gaussian base) and C (||F||^2 / 2) trained on 8 Gaussians."""
    (model, params), x0, sigma_data = _toy(family)
    for t in (1.0, 0.3):
        assert restoring_force_violations(model, params, x0, t, sigma_data) == []


@pytest.mark.slow  # 37 s of training; the untrained and toy cases run by default
def test_short_trained_digits_resnet_energy_restores():
    """The digits C-ResNet with the default Gaussian base term, 100 DSM steps."""
    (model, params), x0, sigma_data = _digits("gaussian")
    for t in (1.0, 0.3):
        assert restoring_force_violations(model, params, x0, t, sigma_data) == []


@pytest.mark.slow
def test_model_c_as_published_has_no_restoring_force():
    """Salimans & Ho's head without a base term is bounded along rays: the property fails."""
    (model, params), x0, sigma_data = _digits("none", steps=100)
    assert restoring_force_violations(model, params, x0, 1.0, sigma_data) != []


def test_gaussian_base_is_the_exact_energy_of_gaussian_data():
    """N = 0: E = c_in^2 ||x||^2 / 2 and s = -x / (alpha^2 sigma_data^2 + sigma^2), the exact
    score of the VP marginal of N(0, sigma_data^2 I) data; 'none' then has zero energy."""
    from ebm_vs_score import sde as sde_lib
    from ebm_vs_score.models import MLP

    sde, sigma_data = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000), 0.5
    net = MLP(hidden=(8,), out="scalar", embedding_dim=8)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    t = jnp.asarray([0.01, 0.2, 0.6, 1.0])
    params = jax.tree.map(jnp.zeros_like, net.init(jax.random.PRNGKey(1), x, t)["params"])
    var = sde.alpha(t) ** 2 * sigma_data**2 + sde.marginal_std(t) ** 2
    fns = param_lib.get_model_fns("resnet_energy", net, sde, sigma_data)
    np.testing.assert_allclose(fns.score(params, x, t), -x / var[:, None], rtol=1e-5)
    np.testing.assert_allclose(fns.energy(params, x, t), 0.5 * jnp.sum(x**2, -1) / var, rtol=1e-5)
    none = param_lib.get_model_fns("resnet_energy", net, sde, sigma_data, energy_base="none")
    np.testing.assert_array_equal(none.energy(params, x, t), jnp.zeros(4))
    with pytest.raises(ValueError, match="valid names: \\['gaussian', 'none'\\]"):
        param_lib.get_model_fns("resnet_energy", net, sde, sigma_data, energy_base="quadratic")


@pytest.mark.parametrize("family, form, rising", [("energy", None, 1.0),
                                                  ("eqm_energy", "l2", 1.0),
                                                  ("resnet_energy", None, 0.0)])
def test_exp_minus_energy_is_normalizable_only_with_a_growing_term(family, form, rising):
    """A squared norm of the GroupNorm U-Net's output is bounded along rays for any
    parameters: the digits C energy ||F||^2 / 2 at t = eps (Salimans & Ho's eq. 5, no base
    term) and EqM-E's l2 form ||F(x)||^2 / 2, so exp(-E) has Z = inf and the evaluation's
    tail test flags every ray, as on the 2000-step checkpoints of
    results/ais_budget_digits_{C,EqM-E_l2}.json; the C-ResNet's Gaussian base term passes.
    Rule 2's exceptions, stated here: a change that gives them a restoring force must
    update this test. (EqM-E's dot form grows only once trained, so it is not pinned.)"""
    from ebm_vs_score import likelihood

    config = config_base.get_config("digits", family)
    if form is not None:
        config.model.energy_form = form
    s = settings.from_config(config)
    model = builders.build_model(s)
    params = builders.init_params(model, jax.random.PRNGKey(0))
    x, _ = data.load_digits_split("test")
    t = jnp.full((16,), 0.0 if s.is_time_invariant else model.sde.eps)
    energy = jax.jit(lambda y: model.fns.energy(params, y, t))
    tail = likelihood.energy_tail(energy, jnp.asarray(x[:16]))
    assert tail["rising_fraction"] == rising, tail
