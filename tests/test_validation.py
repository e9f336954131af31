"""Start-up validation against the tables the code dispatches on, memory lower bounds, and
divergence advice (settings.py, preflight.py, divergence.py), in-process."""

from __future__ import annotations

import glob
import importlib.util
import os

import pytest

from ebm_vs_score import config_base, divergence, errors, preflight, samplers, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_files():
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        spec = importlib.util.spec_from_file_location("config_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield os.path.basename(path), module.get_config()


def test_every_choice_option_of_a_sampler_has_its_table():
    """A new string option of a sampler must come with a CHOICES table (or validation
    could not check it before the run)."""
    for method, options in samplers.OPTIONS.items():
        for name, default in options.items():
            if isinstance(default, str):
                assert name in samplers.CHOICES, (method, name)
                assert default in samplers.CHOICES[name], (method, name, default)


@pytest.mark.parametrize("name", list(samplers.CHOICES))
def test_every_value_of_a_choice_table_passes_and_others_are_refused(name):
    config = config_base.get_config("toy", "energy")
    config.sampling.method = "pc" if name in ("predictor", "corrector") else "ode"
    for value in samplers.CHOICES[name]:
        config.sampling[name] = value
        if name == "predictor" and value == "none":
            config.sampling.corrector = "langevin"
        settings.from_config(config)
    config.sampling[name] = "bogus"
    with pytest.raises(errors.ConfigError, match=f"sampling.{name}='bogus'"):
        settings.from_config(config)


def test_the_dry_run_refuses_what_the_sampler_would_refuse_after_training():
    config = config_base.get_config("toy", "score")
    config.sampling.method, config.sampling.predictor = "pc", "none"
    config.sampling.corrector = "none"
    with pytest.raises(errors.ConfigError, match="would not move the samples"):
        preflight.check(settings.from_config(config), num_devices=1)


@pytest.mark.parametrize("path, value", [("sde.sigma_max", float("inf")),
                                         ("optim.lr", float("-inf")),
                                         ("sampling.snr", float("nan")),
                                         ("model.hidden", (8, float("inf")))])
def test_non_finite_numbers_are_refused_anywhere(path, value):
    config = config_base.get_config("toy", "score")
    section, name = path.split(".")
    config[section][name] = value
    with pytest.raises(errors.ConfigError, match=f"{path}=.* is not a finite number"):
        settings.validate(config)


def test_every_shipped_config_passes_the_memory_lower_bound_with_a_small_machine():
    """A lower bound never refuses a run that fits: every config of configs/ passes on a
    machine of 4 GiB shared by 2 devices."""
    for _, config in _config_files():
        preflight.check(settings.from_config(config), num_devices=1,
                        available=(4 << 30, "test memory", 2))


def test_the_memory_bound_names_the_field_and_both_amounts():
    config = config_base.get_config("toy", "score")
    config.training.batch_size = 10**7
    with pytest.raises(errors.ConfigError) as refused:
        preflight.check(settings.from_config(config), num_devices=1,
                        available=(1 << 30, "test memory", 1))
    message = str(refused.value)
    assert "training.batch_size=10000000 needs at least 4.8 GiB" in message
    assert "more than the 1.0 GiB of test memory" in message


def test_divergence_advice_offers_lower_lr_only_when_it_can_help():
    config = config_base.get_config("digits", "score")
    assert "--config.optim.lr=0.0001" in divergence.advice(settings.from_config(config), 10)
    config.optim.lr = 5.0
    implausible = divergence.advice(settings.from_config(config), 10)
    assert "optim.lr=5 is far above" in implausible
    assert "--config.optim.lr=0.001 (this scale's default)" in implausible
    config.optim.lr, config.model.sigma_data = 1e-3, 1e9
    before = divergence.advice(settings.from_config(config), None, before_any_update=True)
    assert "optim.lr is not the cause" in before and "--config.optim.lr" not in before
    assert "model.sigma_data=1e+09 (default 0.5)" in before and "start again" in before
