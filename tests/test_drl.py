"""Diffusion recovery likelihood (Gao et al. 2021): schedule, chains, loss, sampling, toy fit.

Each test states one property: the T6 levels are the authors' selection from the 1000-step
linear beta schedule; Langevin on a Gaussian recovery conditional with the exact energy
samples its closed-form mean and variance; the MH correction keeps an exact target where
the unadjusted chain is biased; progressive sampling with the exact noisy-mixture energies
reproduces the mixture; a DRL model trained on a 2-D toy matches it (samples by MMD, the
level-0 energy by its rank correlation with the true log-density on a grid).
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy.stats import spearmanr

from ebm_vs_score import config_math, config_read, data, drl, settings
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score.config_base import get_config
from ebm_vs_score.metrics.distances import mmd
from ebm_vs_score.models import MLP, ResNetEnergy, UNet

BANDWIDTHS = [0.1, 0.3, 1.0]  # MMD kernel scales for unit-variance 2-D toys


def _drl_config(num_levels=6, num_steps=30, b_squared=2e-4, metropolis=False):
    return ml_collections.ConfigDict(dict(num_levels=num_levels, num_steps=num_steps,
                                          b_squared=b_squared, metropolis=metropolis,
                                          step_schedule="authors", energy_scale="sigma"))


def _drl(num_levels=6, num_steps=30, b_squared=2e-4, metropolis=False, step_schedule="authors"):
    """Typed DRL settings (what config_math.drl_settings returns for such a config)."""
    return settings.DRLSettings(num_levels, num_steps, b_squared, metropolis, step_schedule)


def _gaussian_energy(mean, var):
    """Exact energy of N(mean, var I) at every level: E(y, t) = ||y - mean||^2 / (2 var)."""
    return lambda y, t: jnp.sum((y - mean) ** 2, axis=-1) / (2 * var)


def _conditional_moments(schedule, level, mean, var, x_tilde):
    """Mean and variance of p(y | x_tilde) for the energy of N(mean, var I) (closed form)."""
    t = jnp.asarray([level])
    coef = float(schedule.is_recovery(t)[0]) / float(schedule.recovery_sigma(t)[0]) ** 2
    precision = 1.0 / var + coef
    return (mean / var + coef * x_tilde) / precision, 1.0 / precision


def _mixture_energy(mixture, schedule):
    """Exact energy of each level: -log density of y_t = alpha_t x_data + std_t eps."""
    return lambda y, t: -mixture.noisy_log_prob(y, schedule.signal_scale(t), schedule.noise_std(t))


# ---------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["toy", "digits", "cifar"])
def test_default_drl_settings_are_the_papers(scale):
    """The defaults are Gao et al. 2021's T6 ladder with K = 30 unadjusted Langevin steps and
    b^2 = 2e-4 with the authors' level factor (their code's flags ``num_diffusion_timesteps
    = 6``, ``mcmc_num_steps = 30``, ``mcmc_step_size_b_square = 2e-4``); the energy is in
    log-density units (this project's 'sigma' scale). Every shipped config validating is
    tests/test_settings.py's test."""
    typed = settings.from_config(get_config(scale, "drl")).drl
    assert typed == settings.DRLSettings(num_levels=6, num_steps=30, b_squared=2e-4,
                                         metropolis=False, step_schedule="authors",
                                         energy_scale="sigma")


@pytest.mark.parametrize("field, value", [
    ("num_levels", 0), ("num_levels", 2.5), ("num_levels", 10_000),
    ("num_steps", 0), ("num_steps", -3),
    ("b_squared", 0.0), ("b_squared", -1e-3), ("b_squared", float("nan")),
    ("metropolis", "yes"), ("metropolis", 1), ("step_schedule", "linear"),
    ("energy_scale", "nats"),
])
def test_bad_settings_give_one_sentence(field, value):
    cfg = types.SimpleNamespace(**_drl_config().to_dict())  # a ConfigDict would refuse a type
    setattr(cfg, field, value)
    with pytest.raises(ValueError) as err:
        config_math.drl_settings(cfg)
    message = str(err.value)
    assert message.startswith(f"drl.{field}=") and "\n" not in message
    assert "--config.drl." in message  # says how to fix it



def test_the_old_name_of_b_squared_is_accepted_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(config_read, "_WARNED", set())  # warned once per process
    config = get_config("toy", "drl")
    config.drl.step_size = 0.05  # drl.step_size held b^2 before it was named drl.b_squared
    with caplog.at_level("WARNING"):
        assert settings.from_config(config).drl.b_squared == 0.05
    assert "drl.step_size is deprecated" in caplog.text and "drl.b_squared" in caplog.text
    config.drl.step_size = None  # unset (config_base's placeholder): the new name counts
    assert settings.from_config(config).drl.b_squared == 2e-4


# ---------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------


def test_t6_levels_are_the_authors_selection_of_the_linear_beta_schedule():
    schedule = drl.make_schedule(6)
    assert schedule.ddpm_steps == (0, 100, 200, 300, 400, 500, 999)
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar_ddpm = np.sqrt(np.cumprod(1.0 - betas))  # DDPM sqrt(bar-alpha_i)
    np.testing.assert_allclose(schedule.alpha_bars, alpha_bar_ddpm[list(schedule.ddpm_steps)],
                               rtol=1e-10)
    np.testing.assert_allclose(np.cumprod(schedule.alphas), schedule.alpha_bars, rtol=1e-10)
    np.testing.assert_allclose(np.square(schedule.alphas) + np.square(schedule.sigmas), 1.0)
    np.testing.assert_allclose(np.square(schedule.alpha_bars) + np.square(schedule.sigma_bars),
                               1.0)
    assert np.all(np.diff(schedule.sigma_bars) > 0)  # noise increases level by level
    np.testing.assert_allclose(schedule.sigma_bars[0], 0.01, rtol=1e-6)  # one DDPM step
    assert schedule.alpha_bars[-1] < 0.01  # x_T is white noise


def test_per_level_coefficients_follow_the_authors_code():
    schedule = drl.make_schedule(6)
    t = jnp.arange(6)
    sig, sbar = np.asarray(schedule.sigmas), np.asarray(schedule.sigma_bars)
    np.testing.assert_allclose(schedule.recovery_sigma(t), sig[1:], rtol=1e-6)
    np.testing.assert_allclose(schedule.loss_weight(t), sig[1] / sig[1:], rtol=1e-6)
    np.testing.assert_allclose(schedule.step_size_sq(t, 2e-4),
                               2e-4 * sbar[:-1] / sbar[0] * sig[1:] ** 2, rtol=1e-5)
    np.testing.assert_array_equal(schedule.is_recovery(t), [1, 1, 1, 1, 1, 0])
    np.testing.assert_allclose(schedule.y_scale(t), list(schedule.alphas[1:-1]) + [1.0],
                               rtol=1e-6)
    assert np.all(np.diff(np.asarray(schedule.noise_std(t))) > 0)


def test_general_number_of_levels():
    assert drl.make_schedule(1).ddpm_steps == (0, 999)
    assert drl.make_schedule(2).ddpm_steps == (0, 500, 999)
    ten = drl.make_schedule(10)
    assert ten.num_levels == 10 and np.all(np.diff(ten.ddpm_steps) > 0)
    assert drl.make_schedule(501).num_levels == 501
    with pytest.raises(ValueError, match="drl.num_levels=502"):
        drl.make_schedule(502)


def test_diffused_pairs_have_the_stated_marginals():
    """y_t = signal_scale(t) x + noise_std(t) eps, x_{t+1} = abar_{t+1} x + sbar_{t+1} eps."""
    schedule = drl.make_schedule(6)
    n = 10_000
    t = jnp.repeat(jnp.arange(6), n)
    x = jnp.full((6 * n, 1), 2.0)
    y, x_next = schedule.diffuse_pair(jax.random.PRNGKey(0), x, t)
    y, x_next = np.asarray(y).reshape(6, n), np.asarray(x_next).reshape(6, n)
    levels = jnp.arange(6)
    np.testing.assert_allclose(y.mean(1), 2 * schedule.signal_scale(levels), atol=0.03)
    np.testing.assert_allclose(y.std(1), schedule.noise_std(levels), rtol=0.03, atol=1e-3)
    np.testing.assert_allclose(x_next.mean(1), 2 * np.asarray(schedule.alpha_bars[1:]),
                               atol=0.03)
    np.testing.assert_allclose(x_next.std(1), schedule.sigma_bars[1:], rtol=0.03)


# ---------------------------------------------------------------------------------------
# Langevin / MALA on exact Gaussian targets
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [2, 5])  # a recovery level and the top (marginal) level
def test_conditional_langevin_samples_the_gaussian_conditional(level):
    schedule = drl.make_schedule(6)
    mean, var, n = jnp.asarray([0.5, -1.0]), 0.25, 4000
    x_tilde = jnp.asarray([1.0, 1.0])
    cond_mean, cond_var = _conditional_moments(schedule, level, mean, var, x_tilde)
    t = jnp.full((n,), level)
    b_squared = 0.05 * cond_var / float(schedule.step_size_sq(t[:1], 1.0)[0])  # s^2 = var/20
    y, info = jax.jit(lambda k: drl.conditional_langevin(
        _gaussian_energy(mean, var), k, jnp.broadcast_to(x_tilde, (n, 2)), t, schedule,
        num_steps=400, b_squared=b_squared))(jax.random.PRNGKey(level))
    y = np.asarray(y)
    assert info["nfe"] == 401 and np.all(np.asarray(info["acceptance"]) == 1.0)
    np.testing.assert_allclose(y.mean(0), cond_mean, atol=4 * np.sqrt(cond_var / n) + 0.01)
    np.testing.assert_allclose(y.var(0).mean(), cond_var, rtol=0.06)  # ULA bias ~1.3%


def test_metropolis_keeps_the_exact_target_where_ula_is_biased():
    """A step of s^2 = 1.5 var (h = s^2 / 2, h P = 0.75): with the MH test the variance is
    var; ULA's is the exact stationary variance of its linear recursion on a Gaussian,
    var / (1 - h P / 2) = 1.6 var (stable for h P < 2: the reference this file replaced
    pinned a chain at h P = 3.2 to 14.4 on levels 2-5, which grew as |1 - h P|^K to 7e10)."""
    schedule = drl.make_schedule(6)
    mean, var, n, level = jnp.zeros(2), 0.25, 4000, 1
    x_tilde = jnp.zeros((n, 2))
    _, cond_var = _conditional_moments(schedule, level, mean, var, jnp.zeros(2))
    t = jnp.full((n,), level)
    b_squared = 1.5 * cond_var / float(schedule.step_size_sq(t[:1], 1.0)[0])

    def chain(metropolis):
        return jax.jit(lambda k: drl.conditional_langevin(
            _gaussian_energy(mean, var), k, x_tilde, t, schedule, num_steps=200,
            b_squared=b_squared, metropolis=metropolis))(jax.random.PRNGKey(1))

    y_mh, info_mh = chain(True)
    y_ula, info_ula = chain(False)
    acceptance = np.asarray(info_mh["acceptance"])
    assert np.all((acceptance >= 0) & (acceptance <= 1)) and 0.2 < acceptance.mean() < 0.95
    prob = np.asarray(info_ula["accept_prob"])
    assert np.all((prob >= 0) & (prob <= 1)) and prob.mean() < 0.95  # ULA's MH diagnostic
    np.testing.assert_allclose(np.asarray(y_mh).var(0).mean(), cond_var, rtol=0.08)
    np.testing.assert_allclose(np.asarray(y_ula).var(0).mean(), 1.6 * cond_var, rtol=0.08)


def test_long_run_chain_snapshots_and_stays_on_target():
    schedule = drl.make_schedule(6)
    cfg = _drl(b_squared=0.05, metropolis=True)
    mean, var, n = jnp.asarray([0.3, 0.3]), 0.04, 2000
    x0 = jnp.full((n, 2), -1.0)
    cond_mean, cond_var = _conditional_moments(schedule, 0, mean, var, jnp.asarray([-1.0, -1.0]))
    snaps, info = jax.jit(lambda k: drl.long_run_chain(
        _gaussian_energy(mean, var), k, x0, 600, 0, cfg.schedule, cfg.chain,
        snapshot_steps=(0, 200, 400, 600)))(jax.random.PRNGKey(0))
    snaps = np.asarray(snaps)
    assert snaps.shape == (4, n, 2) and info["nfe"] == 601
    np.testing.assert_array_equal(info["steps"], [0, 200, 400, 600])
    np.testing.assert_array_equal(snaps[0], np.asarray(x0))
    for snap in snaps[1:]:  # steady: every late snapshot is the conditional
        np.testing.assert_allclose(snap.mean(0), cond_mean, atol=0.02)
        np.testing.assert_allclose(snap.var(0).mean(), cond_var, rtol=0.1)
    log_prob = np.asarray(info["log_prob"]).mean(1)
    assert abs(log_prob[-1] - log_prob[1]) < 0.1


def test_marginal_long_run_chain():
    cfg = _drl(b_squared=2e-3, metropolis=True)
    mean, var = jnp.asarray([1.0, 0.0]), 0.5
    snaps, _ = jax.jit(lambda k: drl.long_run_chain(
        _gaussian_energy(mean, var), k, jnp.zeros((2000, 2)), 300, 3, cfg.schedule, cfg.chain,
        conditional=False,
        snapshot_steps=(300,)))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(snaps[0]).mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.asarray(snaps[0]).var(0).mean(), var, rtol=0.1)


# ---------------------------------------------------------------------------------------
# Progressive sampling with the exact energies
# ---------------------------------------------------------------------------------------


def test_progressive_sampling_with_exact_energies_reproduces_the_mixture():
    """Algorithm 2 driven by the exact noisy-mixture energies of every level."""
    mixture, schedule = data.eight_gaussians(), drl.make_schedule(6)
    cfg = _drl(b_squared=0.03, metropolis=True)
    samples, info = jax.jit(lambda k: drl.drl_sample(
        _mixture_energy(mixture, schedule), k, (2000, 2), schedule, cfg.chain,
        keep_levels=True))(
        jax.random.PRNGKey(0))
    assert info["nfe"] == 6 * 31 and info["levels"].shape == (7, 2000, 2)
    np.testing.assert_array_equal(info["levels"][0], samples)
    per_level = np.asarray(info["acceptance_per_level"])
    assert per_level.shape == (6,) and np.all((per_level > 0) & (per_level <= 1))
    reference = mmd(data.sample_toy("8gaussians", 1, 2000), data.sample_toy("8gaussians", 2, 2000),
                    BANDWIDTHS)
    assert mmd(np.asarray(samples), data.sample_toy("8gaussians", 2, 2000), BANDWIDTHS) < (
        reference + 0.003)


# ---------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------


def _toy_model(hidden=(16, 16), seed=0):
    schedule = drl.make_schedule(6)
    net = MLP(hidden=hidden, out="scalar", embedding_dim=16)
    fns = drl.model_fns("resnet_energy", net, schedule, 1.0)
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    return fns, params, schedule


def _fit(loss_fn, params, batches, lr=1e-3, seed=0):
    """Adam with clipping (the train loop's optimizer); returns params and the losses."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))

    @jax.jit
    def step(carry, x):
        params, opt, i = carry
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, {"x": x}, jax.random.fold_in(jax.random.PRNGKey(seed), i))
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt, i + 1), loss

    (params, _, _), losses = jax.lax.scan(step, (params, tx.init(params), 0), batches)
    return params, np.asarray(losses)


def test_loss_runs_with_finite_gradients_and_decreases():
    fns, params, schedule = _toy_model()
    loss_fn = drl.make_drl_loss(fns.energy, schedule, drl.DRLChain(5, 2e-3))
    batch = {"x": jnp.asarray(data.sample_toy("8gaussians", 0, 64))}
    grad_fn = jax.jit(jax.value_and_grad(
        lambda p: loss_fn(p, batch, jax.random.PRNGKey(0)), has_aux=True))
    tx = optax.adam(3e-3)
    opt, losses = tx.init(params), []
    for _ in range(20):  # a few steps on one batch and key: data and chain samples separate
        (loss, metrics), grads = grad_fn(params)
        assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
        losses.append(float(loss))
        updates, opt = tx.update(grads, opt)
        params = optax.apply_updates(params, updates)
    assert set(metrics) == {"energy_pos", "energy_neg", "acceptance", "accept_prob", "level",
                            "displacement"}
    assert 0 <= metrics["level"] <= 5 and metrics["acceptance"] == 1.0
    assert losses[-1] < losses[0] - 0.1, losses


def test_loss_works_with_the_resnet_energy_and_metropolis():
    schedule = drl.make_schedule(2)
    net = ResNetEnergy(ch=4, ch_mult=(1,), num_res_blocks=1, num_groups=2, dropout=0.1)
    fns = drl.model_fns("resnet_energy", net, schedule, 0.5)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 1)), jnp.float32)
    params = net.init(jax.random.PRNGKey(0), x, jnp.zeros((2,)))["params"]
    loss_fn = drl.make_drl_loss(fns.energy, schedule, drl.DRLChain(2, 1e-3, True))
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, {"x": x}, jax.random.PRNGKey(0))
    assert np.isfinite(loss) and 0 <= metrics["acceptance"] <= 1
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_model_fns_condition_on_the_recovery_noise_and_build_both_energy_families():
    schedule = drl.make_schedule(6)
    t = jnp.arange(6)
    cond = drl.DRLConditioning(schedule)
    np.testing.assert_allclose(cond.marginal_std(t), schedule.recovery_sigma(t))
    np.testing.assert_allclose(cond.alpha(t), schedule.signal_scale(t))
    unet = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4)
    fns = drl.model_fns("conservative", unet, schedule, 0.5)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 1)), jnp.float32)
    params = unet.init(jax.random.PRNGKey(0), x, jnp.zeros((3,)))["params"]
    energy = fns.energy(params, x, jnp.asarray([0, 2, 5]))
    assert energy.shape == (3,) and np.all(np.isfinite(energy))
    with pytest.raises(ValueError, match="model.parameterization='unconstrained'"):
        drl.model_fns("unconstrained", unet, schedule, 0.5)


@pytest.mark.parametrize("b_squared", [2e-4, 0.2])
def test_step_energy_scale_divides_the_network_by_the_squared_step(b_squared):
    """'step' (the authors' ``log_prob = net / b0``): E - B = N / s_t^2, so the chain's drift
    from N, (s_t^2 / 2) grad E, is grad N / 2 whatever b^2 is; 'sigma' is N / (sigma c_in)."""
    schedule, levels = drl.make_schedule(6), jnp.asarray([0, 2, 5])
    net = ResNetEnergy(ch=8, ch_mult=(1,), num_res_blocks=1, num_groups=4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 4, 1)), jnp.float32)
    params = net.init(jax.random.PRNGKey(0), x, jnp.zeros((3,)))["params"]
    chain = drl.DRLChain(30, b_squared, False, "authors")
    build = lambda scale: drl.model_fns("resnet_energy", net, schedule, 0.5, energy_base="none",
                                        energy_scale=scale, chain=chain).energy
    step_sq = schedule.step_size_sq(levels, b_squared, "authors")
    sigma = schedule.recovery_sigma(levels)
    c_in = 1 / jnp.sqrt(schedule.signal_scale(levels) ** 2 * 0.25 + sigma**2)
    raw = build("sigma")(params, x, levels) * sigma * c_in  # N itself
    np.testing.assert_allclose(build("step")(params, x, levels), raw / step_sq, rtol=1e-5)
    drift = 0.5 * step_sq[:, None, None, None] * jax.grad(
        lambda y: build("step")(params, y, levels).sum())(x)
    grad_n = jax.grad(lambda y: (build("sigma")(params, y, levels) * sigma * c_in).sum())(x)
    np.testing.assert_allclose(drift, 0.5 * grad_n, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="drl.energy_scale='bad'"):
        drl.model_fns("resnet_energy", net, schedule, 0.5, energy_scale="bad", chain=chain)
    unet = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4)
    with pytest.raises(ValueError, match="needs model.parameterization='resnet_energy'"):
        drl.model_fns("conservative", unet, schedule, 0.5, energy_scale="step", chain=chain)


@pytest.mark.parametrize("num_levels", [1, 6])
def test_step_scale_loss_is_the_authors_loss_on_the_raw_network(num_levels):
    """With 'step' each level's term is multiplied by s_t^2: the loss is (sigma_1 /
    sigma_{t+1}) (N(y^+) - N(y^-)) on the raw N, not dominated by level 0's 1 / s_0^2."""
    schedule = drl.make_schedule(num_levels)
    chain = drl.DRLChain(5, 2e-4, False, "authors")
    raw = lambda params, y, t, key=None: params * jnp.sum(jnp.sin(y), axis=-1)
    step_energy = lambda params, y, t, key=None: raw(params, y, t) / schedule.step_size_sq(
        t, chain.b_squared, chain.step_schedule)
    batch = {"x": jnp.asarray(np.random.default_rng(0).standard_normal((64, 2)), jnp.float32)}
    key = jax.random.PRNGKey(3)
    step_loss, _ = drl.make_drl_loss(step_energy, schedule, chain, "step")(1.0, batch, key)
    plain_loss, _ = drl.make_drl_loss(step_energy, schedule, chain)(1.0, batch, key)
    if num_levels == 1:  # one level: the two differ by exactly s_0^2
        s0 = float(schedule.step_size_sq(jnp.zeros((1,), jnp.int32), 2e-4, "authors")[0])
        np.testing.assert_allclose(step_loss, plain_loss * s0, rtol=1e-5)
    else:  # same chains; the 'step' loss is on N's scale (|N| ~ 1), the plain one 1/s^2 larger
        assert abs(step_loss) < 5 < abs(plain_loss)


# ---------------------------------------------------------------------------------------
# Must-show: a DRL model fits a 2-D toy with a known density
# ---------------------------------------------------------------------------------------


# s_t = b sigma_{t+1} ('sigma'): every level's chain mixes on the toy
TOY_CFG = _drl(num_steps=30, b_squared=0.1, metropolis=True, step_schedule="sigma")


def _train_and_check(num_iters, hidden, cfg=TOY_CFG, seed=0):
    """Trains on 8gaussians; returns the sample MMD, two baselines and the grid Spearman."""
    fns, params, schedule = _toy_model(hidden, seed)
    rng = np.random.default_rng(seed)
    batches = jnp.asarray(np.stack([data.sample_toy("8gaussians", rng, 256)
                                    for _ in range(num_iters)]))
    params, losses = _fit(drl.make_drl_loss(fns.energy, cfg.schedule, cfg.chain), params,
                          batches, seed=seed)
    assert np.all(np.isfinite(losses))
    energy = param_lib.bind(fns.energy, params)
    samples, _ = jax.jit(lambda k: drl.drl_sample(energy, k, (2000, 2), cfg.schedule,
                                                       cfg.chain))(
        jax.random.PRNGKey(seed + 1))
    held_out = data.sample_toy("8gaussians", 2, 2000)
    gaussian = np.random.default_rng(seed).standard_normal((2000, 2))  # same mean, covariance
    mmds = {"model": mmd(np.asarray(samples), held_out, BANDWIDTHS),
            "reference": mmd(data.sample_toy("8gaussians", 1, 2000), held_out, BANDWIDTHS),
            "gaussian": mmd(gaussian, held_out, BANDWIDTHS)}
    grid = np.stack(np.meshgrid(*[np.linspace(-2, 2, 41)] * 2), -1).reshape(-1, 2)
    zero = jnp.zeros((grid.shape[0],), jnp.int32)
    true = _mixture_energy(data.eight_gaussians(), schedule)(jnp.asarray(grid), zero)
    rho = spearmanr(-np.asarray(energy(jnp.asarray(grid), zero)), -np.asarray(true)).correlation
    return mmds, rho


def test_drl_fits_8gaussians_fast():
    """Short run (K = 15 at twice the step): the level-0 energy already ranks the grid like
    log p and the samples are far closer to the data than the best Gaussian's."""
    cfg = _drl(num_steps=15, b_squared=0.2, metropolis=True, step_schedule="sigma")
    mmds, rho = _train_and_check(2500, (64, 64), cfg)
    assert rho > 0.85, rho  # 0.91-0.95 over seeds 0-2
    assert mmds["model"] < 0.4 * mmds["gaussian"], mmds  # 0.017-0.020 vs 0.096 for N(0, I)


@pytest.mark.slow
def test_drl_fits_8gaussians():
    """Must-show: MMD^2 within 0.008 of two true sample sets' (0.008 = the same mixture with
    1.5x wider modes) and Spearman > 0.9 between -E(., 0) and log p on a 41x41 grid."""
    mmds, rho = _train_and_check(20_000, (64, 64))
    assert rho > 0.9, rho
    assert mmds["model"] < mmds["reference"] + 0.008, mmds


# ---------------------------------------------------------------------------------------
# AIS wiring
# ---------------------------------------------------------------------------------------


def test_nll_by_ais_of_a_gaussian_level0_energy_is_analytic():
    """E(y, 0) of N(0, var I) and y_0 = a_1 x: NLL(x) = -log N(x; 0, var / a_1^2 I)."""
    var, dim = 0.3, 2
    x = jnp.asarray([[0.1, -0.2], [1.0, 2.0]])
    nll, info = jax.jit(lambda k: drl.drl_nll_by_ais(
        _gaussian_energy(jnp.zeros(dim), var), k, x, drl.make_schedule(6), num_chains=256,
        num_steps=100, base_std=0.6))(jax.random.PRNGKey(0))
    var_x = var / drl.make_schedule(6).alphas[1] ** 2
    expected = 0.5 * np.sum(np.asarray(x) ** 2, 1) / var_x + 0.5 * dim * np.log(2 * np.pi * var_x)
    np.testing.assert_allclose(nll, expected, atol=max(0.02, 4 * float(info["stderr"])))
    np.testing.assert_allclose(info["log_z"], 0.5 * dim * np.log(2 * np.pi * var), atol=0.02)
