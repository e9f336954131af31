"""evaluate: every metric group per data type, files written, clear failures.

The statistics themselves (FD of two halves of digits near 0 and growing with noise, MMD,
precision/recall, Fisher divergence of the exact score = 0) are tested in test_metrics.py;
here the wiring: which groups run for which data, their keys and files, and the curl.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import builders, checkpoints, config_base, evaluate, settings, train
from ebm_vs_score import workdir as workdir_lib
from ebm_vs_score.evaluate import energy_vs_ode, runner
from ebm_vs_score.metrics import inception

N_ITERS = 4


def _toy_config(family: str):
    config = config_base.get_config("toy", family)
    config.model.hidden = (16, 16)
    config.training.n_iters = N_ITERS
    config.training.batch_size = 32
    config.training.log_every = 2
    config.sampling.num_steps = 4
    config.sampling.num_samples = 16
    config.eval.num_examples = 64
    config.eval.batch_size = 40  # two sampling chunks of 40 and 24 -> 64 samples
    config.eval.asym_levels = 3
    config.eval.num_samples = 64
    config.eval.nll_rtol = 1e-3
    config.eval.nll_atol = 1e-3
    return config


def _checkpoint_initial_state(s: settings.Settings, workdir: str) -> None:
    """A workdir as training leaves it, with the initial state saved at step N_ITERS (the
    metrics need a model, not a trained one; training is tested in test_train)."""
    model = builders.build_model(s)
    state = train.init_state(model, train.make_optimizer(s.optim), s.seed)
    state = state.replace(step=jnp.asarray(N_ITERS, jnp.int32))
    workdir_lib.save(s, workdir)
    ckpt = checkpoints.Checkpointer(workdir)
    ckpt.save(N_ITERS, state)
    ckpt.close()


@pytest.fixture(scope="module")
def energy_run(tmp_path_factory):
    """A toy energy checkpoint and its full evaluation."""
    workdir = str(tmp_path_factory.mktemp("energy"))
    s = settings.from_config(_toy_config("energy"))
    _checkpoint_initial_state(s, workdir)
    return s, workdir, evaluate.evaluate(s, workdir)


def test_rotation_density_of_linear_fields():
    """curl of x -> A x is A[1,0] - A[0,1]: 0 for a gradient field, 2 for a rotation."""
    points = jax.random.normal(jax.random.PRNGKey(0), (7, 2))
    for a, expected in [([[1.0, 0.5], [0.5, -2.0]], 0.0), ([[0.0, -1.0], [1.0, 0.0]], 2.0),
                        ([[0.3, -0.2], [1.1, 0.7]], 1.3)]:
        matrix = jnp.asarray(a)
        s, curl = evaluate.rotation_density(lambda x, t, m=matrix: x @ m.T, points, 0.5)
        np.testing.assert_allclose(s, points @ matrix.T, rtol=1e-6)
        np.testing.assert_allclose(curl, expected, atol=1e-6)


def test_score_field_grid_of_a_conservative_model_is_curl_free():
    model = builders.build_model(settings.of_family("toy", "energy"))
    params = builders.init_params(model, jax.random.PRNGKey(0))
    grid = evaluate.score_field_grid(model.fns.score, params, (0.05, 0.5), lim=2.0, n=5)
    assert grid["score"].shape == (2, 5, 5, 2) and grid["curl"].shape == (2, 5, 5)
    assert grid["x"].shape == (5, 5) and np.abs(grid["score"]).max() > 0
    assert np.abs(grid["curl"]).max() < 1e-4 * np.abs(grid["score"]).max()


def test_toy_evaluation_has_every_metric_group(energy_run):
    _, workdir, results = energy_run
    levels = 3
    for key in ("asym", "nasym", "nll_nats", "nll_nats_stderr", "nll_true_nats",
                "nll_gap_nats", "fisher", "ais_log_z", "ais_nll_nats", "ais_nll_nats_stderr",
                "ais_nll_gap_nats", "ode_log_z", "energy_ode_spread_nats", "sample_nfe",
                "mmd", "swd"):
        assert np.isfinite(results[key]), key
    for key in ("asym_per_level", "nasym_per_level", "fisher_per_level", "t_levels"):
        assert len(results[key]) == levels, key
    assert results["sample_nfe"] == 5  # 4 Euler-Maruyama steps + the denoising step
    assert results["sample_nonfinite"] == 0.0
    assert results["nll_divergence"] == "exact" and results["nll_probes"] == 0
    assert "bpd" not in " ".join(results)  # toys: nats, no dequantization, no offset
    walls = results["wall_s"]  # the evaluation's own wall time per metric group
    groups = ("restore", "asym", "ode_nll", "energy_ode_agreement", "ais", "fisher",
              "samples", "sample_quality")
    assert set(walls) == set(groups) | {"total"}
    assert all(np.isfinite(walls[g]) and walls[g] > 0 for g in walls)
    assert sum(walls[g] for g in groups) <= walls["total"]
    assert abs(results["asym"]) < 1e-4  # an energy's score is a gradient field
    assert results["nll_true_nats"] == pytest.approx(1.41, abs=0.3)  # 8 Gaussians, std 1/sqrt(33)
    with open(evaluate.eval_path(workdir, N_ITERS)) as f:
        assert json.load(f) == json.loads(json.dumps(results))
    samples = np.load(evaluate.samples_path(workdir, N_ITERS, "euler_maruyama", "npz"))["samples"]
    assert samples.shape == (64, 2)
    assert os.path.exists(evaluate.samples_path(workdir, N_ITERS, "euler_maruyama"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    assert evals and evals[-1]["mmd"] == results["mmd"] and "fisher_per_level" not in evals[-1]


def test_second_sampler_for_an_energy(energy_run):
    config, workdir, results = energy_run
    extra = evaluate.evaluate_sampler(config, workdir, "mala")
    assert 0.0 < extra["sample_acceptance"] <= 1.0
    assert extra["sample_nfe"] == 4 * 2 + 1  # levels x (n_steps_each + 1) + denoising
    assert {"mmd", "swd"} <= set(extra) and "nll_nats" not in extra
    assert os.path.exists(evaluate.eval_path(workdir, N_ITERS, "mala"))
    assert os.path.exists(evaluate.samples_path(workdir, N_ITERS, "mala"))
    assert config.sampling.method == "euler_maruyama"  # the caller's config is untouched


def test_groups_follow_the_data():
    """The true NLL needs a closed-form density (none for moons or images)."""
    moons = config_base.get_config("toy", "score")
    moons.data.dataset = "moons"
    assert evaluate.true_density(settings.from_config(moons).data) is None
    assert evaluate.true_density(settings.of_family("digits", "score").data) is None
    moons.data.dataset = "checkerboard"
    log_prob = evaluate.true_density(settings.from_config(moons).data)
    assert float(log_prob(jnp.zeros((1, 2)))[0]) == pytest.approx(-np.log(6.0))


def test_sample_metrics_draws_in_chunks():
    config = _toy_config("score")
    config.eval.batch_size = 4
    s = settings.from_config(config)
    model = builders.build_model(s)
    params = builders.init_params(model, jax.random.PRNGKey(0))
    samples, info = evaluate.draw_samples(s, model, params, jax.random.PRNGKey(1), 10)
    assert samples.shape == (10, 2) and np.isfinite(samples).all()
    assert info == {"sample_nfe": 5.0}
    assert len({tuple(s) for s in np.round(samples, 5)}) == 10  # chunks use different keys


def test_non_finite_samples_are_counted_and_left_out(tmp_path, monkeypatch):
    config = _toy_config("score")
    x = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    samples = x[::-1].copy()
    samples[:3] = np.nan

    monkeypatch.setattr(runner, "draw_samples",
                        lambda *args: (samples, {"sample_nfe": 5.0}))
    ctx = evaluate.EvalContext(settings.from_config(config), str(tmp_path), None, 0, None, x)
    results = evaluate.sampler_metrics(ctx, jax.random.PRNGKey(0))
    assert results["sample_nonfinite"] == pytest.approx(3 / 32)
    assert np.isfinite(results["mmd"]) and np.isfinite(results["swd"])
    assert os.path.exists(evaluate.samples_path(str(tmp_path), 0, "euler_maruyama"))


class _FakeClassifier(NamedTuple):
    accuracy: float = 0.9

    def apply(self, images):
        flat = np.asarray(images).reshape(len(images), -1)
        return flat[:, :6], flat[:, :10] * 5.0


def test_classifier_metrics_of_identical_sets():
    images = np.random.default_rng(0).uniform(-1, 1, (40, 8, 8, 1))
    out = evaluate.classifier_metrics(_FakeClassifier(), images, images)
    assert out["fd"] == pytest.approx(0.0, abs=1e-6)
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    assert out["is"] > 1.0 and out["classifier_accuracy"] == 0.9
    shifted = evaluate.classifier_metrics(_FakeClassifier(), images + 0.5, images)
    assert shifted["fd"] > 1.0


def test_missing_inception_weights_stop_evaluation_first(tmp_path):
    """Set but missing weights: the inception module's sentence, before any checkpoint work."""
    config = config_base.get_config("digits", "score")
    config.eval.inception_weights = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError) as error:
        # no checkpoint there either
        evaluate.evaluate(settings.from_config(config), str(tmp_path / "run"))
    assert str(error.value) == inception.missing_weights_message(config.eval.inception_weights)


def test_inception_skipped_with_a_log_line(caplog):
    config = config_base.get_config("digits", "score")
    images = np.zeros((4, 8, 8, 1), np.float32)
    with caplog.at_level(logging.INFO):
        assert evaluate.inception_metrics(settings.from_config(config), images, images) == {}
    assert "eval.inception_weights is not set" in caplog.text


def test_image_likelihoods_share_points_offset_and_say_their_divergence():
    """Digits-config evaluation of an exact Gaussian energy on 2x2 'images' (digits levels):
    ODE and AIS bits/dim of the same dequantized points agree (both exact models), the
    divergence is named, and the configured probes are used."""
    from ebm_vs_score import data, parameterization
    from ebm_vs_score import sde as sde_lib
    from ebm_vs_score.evaluate import exact_models

    config = config_base.get_config("digits", "energy")
    config.eval.batch_size = 16
    config.eval.nll_probes = 0  # the exact divergence: AIS and the ODE agree to 0.1 nats
    sde = sde_lib.VPSDE()
    score, energy = exact_models.mixture_model(sde)
    flat = lambda fn: (lambda p, x, t, key=None: fn(p, x.reshape(len(x), -1), t))  # noqa: E731
    fns = parameterization.ModelFns(
        score=lambda p, x, t, key=None: flat(score)(p, x, t).reshape(x.shape),
        energy=flat(energy), conservative=True)
    gauss = data.GaussianMixture(jnp.ones(1), jnp.zeros((1, 4)),
                                                  jnp.full((1,), 0.5))
    bins = data.DIGITS_LEVELS
    levels = np.random.default_rng(0).integers(0, bins, (16, 2, 2, 1))
    x = (2 * levels / (bins - 1) - 1).astype(np.float32)
    model = builders.Model(None, sde, fns, (2, 2, 1))
    ctx = evaluate.EvalContext(settings.from_config(config), "unused", model, 0, gauss, x)
    out = runner.likelihood_metrics(ctx, jax.random.PRNGKey(0))
    assert out["nll_divergence"] == "exact" and out["nll_probes"] == 0
    assert out["ais_nll_bpd"] == pytest.approx(out["nll_bpd"], abs=0.1 / (4 * np.log(2)))
    # bits/dim = nats / (D ln 2) + log2(L) - 1 on both paths
    offset = np.log2(bins) - 1
    for prefix in ("nll", "ais_nll"):
        assert out[f"{prefix}_bpd"] == pytest.approx(
            out[f"{prefix}_nats"] / (4 * np.log(2)) + offset, abs=1e-9)
        assert out[f"{prefix}_bpd_stderr"] > 0


def test_ais_is_skipped_for_an_energy_bounded_along_rays():
    """exp(-E) with E bounded far out has Z = inf: the evaluation says so (the tail numbers,
    ais_normalizable False) instead of an AIS estimate that only grows with its budget;
    the exact Gaussian energy passes the same test and gets its AIS keys."""
    from ebm_vs_score import sde as sde_lib
    from ebm_vs_score.evaluate import nll

    x = np.random.default_rng(0).uniform(-1, 1, (8, 2, 2, 1)).astype(np.float32)
    protocol = nll.Protocol(num_bins=None, num_probes=0, rtol=1e-3, atol=1e-3, batch_size=8)
    bounded = lambda p, y, t: 3.0 * jnp.tanh(jnp.sum(y.reshape(len(y), -1) ** 2, -1))  # noqa: E731
    out = nll.ais_nll_metrics(bounded, None, x, jax.random.PRNGKey(0), sde=sde_lib.VPSDE(),
                              protocol=protocol, num_steps=4, num_chains=4)
    assert out["ais_normalizable"] is False and out["energy_tail_rising_fraction"] == 1.0
    assert not any(k.startswith("ais_nll") or k == "ais_log_z" for k in out)
    gauss = lambda p, y, t: 0.5 * jnp.sum(y.reshape(len(y), -1) ** 2, -1)  # noqa: E731
    out = nll.ais_nll_metrics(gauss, None, x, jax.random.PRNGKey(0), sde=sde_lib.VPSDE(),
                              protocol=protocol, num_steps=4, num_chains=4)
    assert out["ais_normalizable"] is True and np.isfinite(out["ais_log_z"])
    assert out["ais_chains"] == 4 and out["ais_nfe"] == pytest.approx(21 * (1 + 16 / 4))


def test_ais_on_images_starts_from_a_base_fitted_to_the_points():
    """On images the evaluation's AIS pools N(mean, covariance) of the points with N(0, I),
    half the chains each: on a 4x4x4 Gaussian whose pixel scales span 0.003-0.5 it recovers
    the exact log Z (within the ln 2 the dead isotropic half may cost) with a converged
    ESS, and states a 99% lower bound of the NLL; the same points as vector data
    (isotropic N(0, I) base alone) do not converge. Above 1024 dimensions the fitted base
    is diagonal, and one point gets the dequantization noise's scale."""
    from ebm_vs_score.evaluate import nll

    stds = np.logspace(np.log10(0.003), np.log10(0.5), 64).reshape(4, 4, 4)
    mu = np.random.default_rng(0).uniform(-0.9, 0.9, (4, 4, 4))
    x = (mu + stds * np.random.default_rng(1).standard_normal((64, 4, 4, 4))).astype(
        np.float32)
    energy = lambda p, y: 0.5 * jnp.sum(((y - mu) / stds).reshape(len(y), -1) ** 2, -1)  # noqa: E731
    true = float(np.sum(np.log(stds)) + 32 * np.log(2 * np.pi))
    out = nll.ais_results(energy, None, x, jax.random.PRNGKey(0), 256, num_chains=128)
    assert out["ais_base"] == "pooled: fitted full covariance + isotropic"
    assert out["ais_converged"] and len(out["ais_log_z_per_base"]) == 2
    se = 3 * out["ais_log_z_stderr"] + 1e-3
    assert true - np.log(2) - se < out["ais_log_z"] < true + se
    assert abs(out["ais_log_z_per_base"][0] - true) < 1.0  # the fitted base alone
    assert out["ais_log_z_per_base"][1] < true - 20  # N(0, I) alone misses it
    assert out["ais_nll_bpd_lower99"] == pytest.approx(
        out["ais_nll_bpd"] - np.log(100) / (64 * np.log(2)))
    assert out["ais_nll_nats_lower99"] == pytest.approx(out["ais_nll_nats"] - np.log(100))
    floor = nll.ais_base(x[:1], 256)["bases"][0]["base_std"]  # one point: the bin noise
    assert np.allclose(floor, (2 / 256) / np.sqrt(12))
    wide = nll.ais_base(np.zeros((3, 2, 1025), np.float32), 256)["bases"][0]
    assert "base_chol" not in wide and wide["base_std"].shape == (2, 1025)
    iso = nll.ais_results(energy, None, x, jax.random.PRNGKey(0), None, num_chains=128)
    assert iso["ais_base"] == "isotropic" and not iso["ais_converged"]


def test_energy_vs_ode_mode_reruns_the_eval_likelihood_and_refuses_a_mismatch(
        energy_run, tmp_path):
    """--mode=energy_vs_ode recomputes the eval's ODE NLL number for number (same points and
    probes), adds the agreement keys to the eval JSON and a study run's DONE.json, and leaves
    a JSON whose NLL it does not reproduce untouched."""
    config, workdir, results = energy_run
    run = str(shutil.copytree(workdir, tmp_path / "run"))
    path = evaluate.eval_path(run, N_ITERS)
    with open(path) as f:
        saved = json.load(f)
    evaluate.write_json_atomic(path, dict(saved, nll_nats=saved["nll_nats"] + 0.5))
    with open(path) as f:
        wrong_text = f.read()
    (row,) = energy_vs_ode.run_energy_vs_ode(config, run)
    assert not row["eval_json_updated"]
    with open(path) as f:
        assert f.read() == wrong_text
    evaluate.write_json_atomic(path, saved)
    done = os.path.join(run, "DONE.json")  # as a study run has it
    evaluate.write_json_atomic(done, {"results": {"nll_nats": saved["nll_nats"]}})
    (row,) = energy_vs_ode.run_energy_vs_ode(config, run)
    assert row["eval_json_updated"]
    assert row["nll_nats"] == pytest.approx(results["nll_nats"], rel=1e-6)
    assert row["ode_log_z"] == pytest.approx(results["ode_log_z"], rel=1e-6)
    for record in (path, done):
        with open(record) as f:
            values = json.load(f)
        values = values.get("results", values)
        assert values["energy_ode_spread_nats"] == row["energy_ode_spread_nats"]


def test_ais_of_a_few_chains_ess_is_marked_unconverged():
    """The same 4-D Gaussian evaluation: a standard normal energy is converged with 64
    chains; a sharp one (std 0.01 at distance 3) annealed in 2 steps has an ESS of a few
    chains and is marked unconverged (its values stay in the JSON)."""
    from ebm_vs_score import sde as sde_lib
    from ebm_vs_score.evaluate import nll

    x = np.random.default_rng(0).uniform(-1, 1, (8, 2, 2, 1)).astype(np.float32)
    protocol = nll.Protocol(num_bins=None, num_probes=0, rtol=1e-3, atol=1e-3, batch_size=8)
    easy = lambda p, y, t: 0.5 * jnp.sum(y.reshape(len(y), -1) ** 2, -1)  # noqa: E731
    sharp = lambda p, y, t: 0.5e4 * jnp.sum((y.reshape(len(y), -1) - 3.0) ** 2, -1)  # noqa: E731
    runs = {name: nll.ais_nll_metrics(e, None, x, jax.random.PRNGKey(0), sde=sde_lib.VPSDE(),
                                      protocol=protocol, num_steps=steps, num_chains=64)
            for name, e, steps in (("easy", easy, 50), ("sharp", sharp, 2))}
    assert runs["easy"]["ais_converged"] is True and runs["easy"]["ais_ess"] >= nll.AIS_MIN_ESS
    assert runs["sharp"]["ais_converged"] is False
    assert runs["sharp"]["ais_ess"] < nll.AIS_MIN_ESS and "ais_log_z" in runs["sharp"]
