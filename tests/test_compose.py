"""Composition operators on analytic Gaussians (Du et al. 2023, "Reduce, Reuse, Recycle").

For isotropic Gaussians N(m_i, s_i² I) with energies E_i = ‖x - m_i‖²/(2 s_i²) + log Z_i:
* the product N(m_1, s_1²) N(m_2, s_2²) is the Gaussian with precision 1/s_1² + 1/s_2² and
  mean (m_1/s_1² + m_2/s_2²) / precision;
* p_1 / p_2^α is the Gaussian with precision 1/s_1² - α/s_2² (> 0) and mean
  (m_1/s_1² - α m_2/s_2²) / precision;
* the mixture energy -log Σ w_i exp(-E_i) is exactly -log of the mixture density when the
  E_i are normalized (include log Z_i).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import compose, samplers, settings
from ebm_vs_score import sde as sde_lib

M1, S1 = jnp.array([1.0, -0.5]), 0.7
M2, S2 = jnp.array([-0.5, 1.5]), 1.3


def gaussian(mean, std, normalized=True):
    d = mean.shape[0]
    log_z = 0.5 * d * jnp.log(2 * jnp.pi * std**2) if normalized else 0.0

    def energy(x, t):
        del t
        return jnp.sum((x - mean) ** 2, -1) / (2 * std**2) + log_z

    def score(x, t):
        del t
        return -(x - mean) / std**2

    return compose.Component(score, energy)


def _points(n=64, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, 2)) * 2.0


def _check_gaussian(comp, mean, precision, x):
    """comp's energy differences and score are those of N(mean, 1/precision)."""
    t = jnp.zeros((x.shape[0],))
    exact_e = 0.5 * precision * jnp.sum((x - mean) ** 2, -1)
    e = comp.energy(x, t)
    np.testing.assert_allclose(e - e[0], exact_e - exact_e[0], rtol=1e-4, atol=1e-4)
    exact_s = -precision * (x - mean)
    np.testing.assert_allclose(comp.score(x, t), exact_s, rtol=1e-5, atol=1e-5)
    grad_e = jax.grad(lambda y: comp.energy(y, t).sum())(x)
    np.testing.assert_allclose(-grad_e, exact_s, rtol=1e-5, atol=1e-5)


def test_product_of_gaussians_is_the_product_gaussian():
    comp = compose.product([gaussian(M1, S1), gaussian(M2, S2)])
    prec = 1 / S1**2 + 1 / S2**2
    mean = (M1 / S1**2 + M2 / S2**2) / prec
    _check_gaussian(comp, mean, prec, _points())


def test_weighted_product_is_tempered_product():
    comp = compose.product([gaussian(M1, S1), gaussian(M2, S2)], weights=[2.0, 0.5])
    prec = 2 / S1**2 + 0.5 / S2**2
    mean = (2 * M1 / S1**2 + 0.5 * M2 / S2**2) / prec
    _check_gaussian(comp, mean, prec, _points(seed=1))


def test_negation_of_gaussians_is_the_quotient_gaussian():
    alpha = 0.5  # alpha s_1^2 < s_2^2: normalizable
    comp = compose.negation(gaussian(M1, S1), gaussian(M2, S2), alpha)
    prec = 1 / S1**2 - alpha / S2**2
    mean = (M1 / S1**2 - alpha * M2 / S2**2) / prec
    _check_gaussian(comp, mean, prec, _points(seed=2))


def test_mixture_energy_is_exact_mixture_neg_log_density():
    w = [0.3, 0.7]
    comp = compose.mixture([gaussian(M1, S1), gaussian(M2, S2)], weights=w)
    x = _points(seed=3)
    t = jnp.zeros((x.shape[0],))
    p = (w[0] * jnp.exp(-gaussian(M1, S1).energy(x, t))
         + w[1] * jnp.exp(-gaussian(M2, S2).energy(x, t)))
    np.testing.assert_allclose(comp.energy(x, t), -jnp.log(p), rtol=1e-5, atol=1e-5)
    grad_logp = jax.grad(lambda y: jnp.log(
        w[0] * jnp.exp(-gaussian(M1, S1).energy(y, t))
        + w[1] * jnp.exp(-gaussian(M2, S2).energy(y, t))).sum())(x)
    np.testing.assert_allclose(comp.score(x, t), grad_logp, rtol=1e-4, atol=1e-4)


def test_mixture_of_unnormalized_energies_has_the_wrong_weights():
    """Without log Z_i the mixture weights become w_i Z_i: not the exact mixture."""
    comp = compose.mixture([gaussian(M1, S1, False), gaussian(M2, S2, False)])
    exact = compose.mixture([gaussian(M1, S1), gaussian(M2, S2)])
    x = _points(seed=4)
    t = jnp.zeros((x.shape[0],))
    diff = comp.energy(x, t) - exact.energy(x, t)
    assert float(jnp.std(diff)) > 0.05  # not a constant shift


def test_exact_log_density_matches_components():
    lp1 = lambda x: -gaussian(M1, S1).energy(x, None)  # noqa: E731
    lp2 = lambda x: -gaussian(M2, S2).energy(x, None)  # noqa: E731
    x = _points(seed=5)
    t = jnp.zeros((x.shape[0],))
    for op in compose.OPERATORS:
        comp = compose.compose(op, [gaussian(M1, S1), gaussian(M2, S2)], alpha=0.5)
        logp = compose.exact_log_density(op, [lp1, lp2], alpha=0.5)(x)
        e = comp.energy(x, t)
        np.testing.assert_allclose(-(logp - logp[0]), e - e[0], rtol=1e-4, atol=1e-4)


def test_score_only_product_and_negation_are_score_sums():
    s1, s2 = gaussian(M1, S1).score, gaussian(M2, S2).score
    x = _points(seed=6)
    t = jnp.zeros((x.shape[0],))
    prod = compose.product([compose.Component(s1), compose.Component(s2)])
    neg = compose.negation(compose.Component(s1), compose.Component(s2), 0.25)
    assert prod.energy is None and neg.energy is None
    np.testing.assert_allclose(prod.score(x, t), s1(x, t) + s2(x, t), rtol=1e-6)
    np.testing.assert_allclose(neg.score(x, t), s1(x, t) - 0.25 * s2(x, t), rtol=1e-6)


def test_score_only_mixture_is_refused_in_one_sentence():
    with pytest.raises(ValueError) as err:
        compose.mixture([gaussian(M1, S1), compose.Component(gaussian(M2, S2).score)])
    msg = str(err.value)
    assert "energy" in msg and "[1]" in msg
    assert "\n" not in msg and msg.endswith(".") and ". " not in msg


def test_unknown_operator_lists_valid_names():
    with pytest.raises(ValueError, match="product"):
        compose.compose("sum", [gaussian(M1, S1)])


def test_mala_samples_the_product_of_two_gaussians():
    """Annealed MALA on the composed energies ends at the product Gaussian (last level)."""
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=1000)

    def diffused(mean, std):
        def energy(x, t):
            var = std**2 + sde.marginal_std(t)[:, None] ** 2
            return jnp.sum((x - mean) ** 2 / (2 * var), -1)
        return compose.Component(lambda x, t: -jax.grad(lambda y: energy(y, t).sum())(x), energy)

    comp = compose.product([diffused(M1, S1), diffused(M2, S2)])
    x, info = samplers.sample("mala", jax.random.PRNGKey(0), (4000, 2), sde=sde,
                              score_fn=comp.score, energy_fn=comp.energy, num_steps=30,
                              n_steps_each=10, step_size=0.05, denoise=False)
    prec = 1 / S1**2 + 1 / S2**2
    mean = (M1 / S1**2 + M2 / S2**2) / prec
    np.testing.assert_allclose(jnp.mean(x, 0), mean, atol=0.05)
    np.testing.assert_allclose(jnp.var(x, 0), 1 / prec, rtol=0.1)
    assert 0.3 < float(info["acceptance"]) <= 1.0


@pytest.mark.slow  # four tiny trainings and five compiled samplers: ~60 s of CPU
def test_compose_mode_writes_report_with_finite_numbers(tmp_path):
    """--mode=compose end to end on tiny settings: report, figure, finite MMD and mode TV."""
    import importlib.util
    import json
    import math
    import pathlib

    from ebm_vs_score.compose import run as compose_run

    file = pathlib.Path(__file__).parents[1] / "configs" / "toy_compose.py"
    spec = importlib.util.spec_from_file_location("toy_compose", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.training.n_iters = 10
    config.training.log_every = 5
    config.training.checkpoint_every = 10
    config.training.sample_every = 10
    config.training.batch_size = 64
    config.compose.families = ("score", "energy")
    config.compose.operators = ("product", "mixture")
    config.compose.samplers = ("euler_maruyama", "mala")
    config.compose.num_samples = 64
    config.compose.sde_steps = config.compose.mcmc_levels = 5
    config.compose.n_steps_each = 1
    config.compose.grid_size = 40
    path = compose_run.run_compose(settings.from_config(config), str(tmp_path))
    report = open(path).read()
    assert "refused: a mixture needs energies" in report and "refused: MH needs an energy" in report
    assert (tmp_path / "compose" / "samples.png").stat().st_size > 0
    rows = json.load(open(tmp_path / "compose" / "results.json"))["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5  # U product EM; C product EM, MALA; C mixture EM, MALA
    assert all(math.isfinite(r["mmd"]) and math.isfinite(r["mode_tv"]) for r in ok)
    # a second call reuses the trained runs
    compose_run.run_compose(settings.from_config(config), str(tmp_path))
    runs = json.load(open(tmp_path / "compose" / "results.json"))["runs"]
    assert runs["energy"] == {"8gaussians": "reused", "gmm": "reused"}
