"""The time-invariant families end to end: configs, refusals in one sentence, the phased
Energy Matching step, training, evaluation and the study plan (issue #26)."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import builders, config_base, evaluate, settings, study, train
from ebm_vs_score.evaluate import ood
from ebm_vs_score.study import plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("eqm", "eqm_energy", "energy_matching")


def _load(name: str):
    spec = importlib.util.spec_from_file_location("cfg", f"{REPO}/configs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("scale", ["toy", "digits", "cifar"])
@pytest.mark.parametrize("family", FAMILIES)
def test_config_files_validate_and_build(scale, family):
    config = _load(f"{scale}_{family}")
    if scale == "cifar":
        config.data.dataset = "patches32"  # offline
    typed = settings.from_config(config)
    assert typed.time_invariant is not None and typed.sampling.method in ("nag", "langevin")
    model = builders.build_model(typed)
    assert model.sde is None and (model.fns.energy is None) == (family == "eqm")


def _config(family="eqm", **fields):
    config = config_base.get_config("toy", family)
    for path, value in fields.items():
        section, name = path.split("__")
        config[section][name] = value
    return config


def _refusal(config) -> str:
    with pytest.raises(settings.ConfigError) as error:
        settings.from_config(config)
    message = str(error.value)
    assert "\n" not in message and message.count(". ") == 0, message
    return message


def test_mala_on_the_implicit_eqm_field_is_refused_in_one_sentence():
    message = _refusal(_config("eqm", sampling__method="langevin_mh"))
    assert message == (
        "sampling.method='langevin_mh' is Metropolis-Hastings and needs energy differences, "
        "but the implicit EqM field f(x) has no energy; sample it with 'gd', 'nag' or "
        "'langevin', or train an energy (configs/*_eqm_energy.py)")


@pytest.mark.parametrize("family,fields,match", [
    ("eqm", {"sampling__method": "mala"},
     "runs over the noise levels .* time-invariant .* \\['gd', 'nag', 'langevin'\\]$"),
    ("eqm_energy", {"sampling__method": "ula"}, "\\['gd', 'nag', 'langevin', 'langevin_mh'\\]"),
    ("score", {"sampling__method": "gd"}, "descends a time-invariant field"),
    ("energy_matching", {"model__parameterization": "unconstrained"}, "has none"),
    ("eqm_energy", {"model__energy_form": "scalar"}, "does not fit a vector network"),
    ("eqm", {"eqm__interp": 1.0}, "eqm.interp=1.0"),
    ("energy_matching", {"energy_matching__num_gibbs": 0}, "energy_matching.num_gibbs=0"),
    ("energy_matching", {"energy_matching__phase1_steps": -1}, "phase1_steps=-1 must be"),
    ("eqm", {"training__qc_weight": 0.1}, "training.qc_weight=0.1 regularizes"),
    ("eqm", {"sampling__mu": 1.0}, "mu=1.0 must lie in"),
])
def test_bad_values_are_refused_in_one_sentence(family, fields, match):
    import re

    assert re.search(match, _refusal(_config(family, **fields)))


def test_scalar_form_on_the_resnet_energy_validates():
    config = config_base.get_config("digits", "eqm_energy")
    config.model.parameterization = config.model.name = "resnet_energy"
    config.model.energy_form = "scalar"
    assert settings.from_config(config).time_invariant.energy_form == "scalar"


def test_energy_matching_switches_loss_at_the_phase_boundary(tmp_path):
    """Steps 0..P-1 train the warm-up (metrics without CD), steps from P add CD; a run
    resumed past P continues in phase 2 (the phase is a function of the step)."""
    config = config_base.get_config("toy", "energy_matching")
    config.energy_matching.phase1_steps, config.energy_matching.num_gibbs = 2, 3
    config.training.batch_size = 16
    s = settings.from_config(config)
    model = builders.build_model(s)
    mesh = train.make_mesh()
    state, step = train.fresh_state_and_step(s, model, mesh)
    assert isinstance(step, train.PhasedStep)
    batch = train.global_batch({"x": np.zeros((16, 2), np.float32)}, mesh)
    seen = []
    for _ in range(4):
        state, metrics = step(state, batch)
        seen.append("v_neg" in metrics)
    assert seen == [False, False, True, True]
    resumed = train.compile_train_step(builders.build_loss_fn(s, model),
                                       train.make_optimizer(s.optim), 0.999, mesh, state)
    assert resumed.next == 4 and "v_neg" in resumed(state, batch)[1]


def test_ood_auroc_and_patch_shrinking():
    assert ood.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ood.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert ood.auroc(np.array([1.0]), np.array([1.0])) == 0.5
    patches = np.zeros((2, 32, 32, 3), np.float32)
    patches[:, :4, :4] = 1.0
    small = ood.patches_as_digits(patches)
    assert small.shape == (2, 8, 8, 1) and small[0, 0, 0, 0] == 1.0 and small[0, 1, 1, 0] == 0


def test_study_variants_and_run_configs_keep_their_own_sampler(tmp_path):
    config = study.get_config("digits")
    assert plan.variants(settings.from_config(config))[-4:] == [
        "eqm", "eqm_energy_dot", "eqm_energy_l2", "energy_matching"]
    for variant, method, form in [("eqm", "nag", None), ("eqm_energy_l2", "nag", "l2"),
                                  ("energy_matching", "langevin", "dot")]:
        run = plan.run_config(config, variant, 1, str(tmp_path))
        settings.validate(run)
        assert run.sampling.method == method and run.training.n_iters == 2000
        assert run.training.batch_size == config.training.batch_size and run.seed == 1
        if form is not None:
            assert run.model.energy_form == form
    score = plan.run_config(config, "score", 1, str(tmp_path))
    assert score.sampling.method == "euler_maruyama"


@pytest.mark.slow
def test_toy_eqm_trains_evaluates_and_samples(tmp_path):
    """A short toy EqM run: finite loss, eval JSON with NAsym per gamma, the exact-field
    error, the NFE sweep and sample NFE statistics."""
    config = _load("toy_eqm")
    config.training.n_iters, config.training.log_every = 60, 30
    config.training.checkpoint_every = config.training.sample_every = 60
    config.sampling.num_samples, config.eval.num_examples = 256, 256
    config.eval.nfe_sweep_steps, config.eval.nfe_sweep_tols = (10,), (1.0,)
    workdir = str(tmp_path / "run")
    s = settings.from_config(config)
    state = train.train_and_evaluate(s, workdir)
    assert int(state.step) == 60
    results = evaluate.evaluate(s, workdir)
    assert len(results["nasym_per_gamma"]) == 5 and 0 <= results["nasym"] <= 1
    assert 0 < results["eqm_field_rel_error"] < 2
    assert [r["sampler"] for r in results["nfe_sweep"]] == ["gd_10", "nag_10", "nag_eqm_10",
                                                            "nag_tol1"]
    assert results["sample_nfe"] == config.sampling.num_steps and np.isfinite(results["mmd"])
    drawn = evaluate.sample(s, workdir)
    assert drawn.shape == (256, 2) and bool(jnp.all(jnp.isfinite(drawn)))
    assert jax.device_count() >= 1


def test_path_asymmetry_of_a_linear_field_is_exact():
    """Asym of x -> A x is ||A - A^T||_F^2 / 2 at every gamma (Chao et al. eq. 6)."""
    from ebm_vs_score.evaluate import time_invariant

    a = jnp.asarray([[1.0, 2.0], [0.0, 3.0]])
    out = time_invariant.path_asymmetry(lambda p, x, t: x @ p.T, a, np.ones((8, 2)),
                                        jax.random.PRNGKey(0), num_probes=0)
    np.testing.assert_allclose(out["asym_per_gamma"], [4.0] * 5, rtol=1e-5)
    np.testing.assert_allclose(out["nasym"], 8.0 / (4 * 14.0), rtol=1e-5)


def test_workdirs_written_before_these_families_still_resume(tmp_path):
    """A saved config without the new eqm / energy_matching / energy_form fields resumes."""
    from ebm_vs_score import workdir as workdir_lib

    config = config_base.get_config("digits", "energy")
    workdir_lib.save(settings.from_config(config), str(tmp_path))
    path = tmp_path / "config.json"
    import json

    saved = json.loads(path.read_text())
    for section in ("eqm", "energy_matching"):
        del saved[section]
    del saved["model"]["energy_form"]
    path.write_text(json.dumps(saved))
    workdir_lib.check_workdir(settings.from_config(config), str(tmp_path))


def test_nfe_sweep_runs_one_chain_per_form_and_pairs_every_row():
    """The sweep's rows keep sweep_settings' order and fields; each fixed-step form is one
    ``measure_steps`` call over the sorted distinct counts, the adaptive rows one ``measure``
    each, and every call gets the same key (paired rows)."""
    from ebm_vs_score.evaluate import time_invariant

    s = settings.from_config(_load("toy_eqm"))
    calls = []

    def measure_steps(entry, key, counts):
        calls.append(("steps", entry.sampling.method, entry.sampling.options.get("nag_form"),
                      entry.sampling.num_steps, counts, tuple(np.asarray(key))))
        return [{"nfe": n} for n in counts]

    def measure(entry, key):
        calls.append(("one", entry.sampling.method, entry.sampling.options["tol"],
                      entry.sampling.num_steps, None, tuple(np.asarray(key))))
        return {"nfe": -1}

    rows = time_invariant.nfe_sweep(s, measure_steps, measure, jax.random.PRNGKey(7),
                                    (20, 5, 20), (2.0,))
    assert [r["sampler"] for r in rows] == [
        "gd_20", "nag_20", "nag_eqm_20", "gd_5", "nag_5", "nag_eqm_5", "nag_tol2"]
    assert [r["nfe"] for r in rows] == [20, 20, 20, 5, 5, 5, -1]
    assert rows[3]["num_steps"] == 5 and rows[-1]["tol"] == 2.0
    assert [c[:5] for c in calls] == [("steps", "gd", None, 20, (5, 20)),
                                      ("steps", "nag", "nesterov", 20, (5, 20)),
                                      ("steps", "nag", "eqm", 20, (5, 20)),
                                      ("one", "nag", 2.0, 20, None)]
    assert len({c[5] for c in calls}) == 1


def test_nfe_sweep_rows_equal_separate_runs_of_each_sampler():
    """On a toy EqM network: every fixed-step row of the evaluation's sweep (one chain per
    form) equals the sampler run alone at that step count from the sweep's key, and the
    adaptive row starts from the same noise."""
    from ebm_vs_score.evaluate import runner, time_invariant

    config = _load("toy_eqm")
    config.model.hidden = (16, 16)
    config.eval.num_samples = config.eval.num_examples = 48
    config.eval.batch_size = 32  # two chunks
    s = settings.from_config(config)
    model = builders.build_model(s)
    params = builders.init_params(model, jax.random.PRNGKey(0))
    leaves, tree = jax.tree.flatten(params)  # the output layer starts at zero: f = 0
    params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(jax.random.PRNGKey(i), p.shape)
                                       for i, p in enumerate(leaves)])
    x = np.random.default_rng(0).normal(size=(48, 2)).astype(np.float32)
    ctx = evaluate.EvalContext(s, "unused", model, 0, params, x)
    key = jax.random.PRNGKey(5)
    rows = {r["sampler"]: r for r in time_invariant.nfe_sweep(
        s, lambda e, k, n: runner._sweep_points(ctx, e, k, n),
        lambda e, k: runner._sweep_point(ctx, e, k), key, (3, 8), (1e3, 1e-9))}
    for label, fields in time_invariant.sweep_settings((3, 8), ()):
        alone = runner._sweep_point(ctx, settings.override(
            s, {f"sampling.{k}": v for k, v in fields.items()}), key)
        for name in ("mmd", "swd", "sample_nfe", "sample_final_grad_norm"):
            assert rows[label][name] == pytest.approx(alone[name], rel=1e-5, abs=1e-7), label
    # tol above every ||f||: the adaptive chains stop at once, where they started
    assert rows["nag_tol1000"]["sample_nfe"] == 1.0
    # tol below every ||f||: no chain stops, and the row IS nag_8's (the same noise)
    assert rows["nag_tol1e-09"]["mmd"] == pytest.approx(rows["nag_8"]["mmd"], rel=1e-5)
    assert rows["gd_3"]["sample_final_grad_norm"] > 0
    assert rows["gd_3"]["mmd"] != pytest.approx(rows["gd_8"]["mmd"], rel=1e-3)
