"""The one config boundary (ebm_vs_score.settings): every shipped config turns into frozen
typed settings, refusals are one sentence naming the field and the valid choices (taken
from the module that owns them), and no math module reads a config
(tests/test_config_boundary.py walks every module's syntax tree for that)."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import runpy

import pytest

from ebm_vs_score import config_base, samplers, settings
from ebm_vs_score import sde as sde_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("study"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_file_gives_frozen_settings(path):
    config = runpy.run_path(str(path))["get_config"]()
    typed = settings.from_config(config)
    assert typed.is_drl == (config.training.objective == "drl")
    assert (typed.drl is not None) == typed.is_drl
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.loss.qc_weight = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("field, value, valid", [
    ("sde.name", "cosine", sde_lib.SDE_NAMES),
    ("sampling.method", "euler", samplers.METHODS),
])
def test_unknown_names_list_the_owners_valid_names(field, value, valid):
    config = config_base.get_config("toy", "score")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(settings.ConfigError) as error:
        settings.from_config(config)
    message = str(error.value)
    assert message.startswith(f"{field}={value!r}") and str(list(valid)) in message
    assert "\n" not in message


def test_metropolis_sampler_on_a_score_model_is_refused_once():
    config = config_base.get_config("toy", "score")
    config.sampling.method = "mala"
    with pytest.raises(settings.ConfigError, match="needs energy differences.*'ula'"):
        settings.from_config(config)


def test_none_sampling_fields_take_the_methods_defaults():
    config = config_base.get_config("toy", "energy")
    config.sampling.method = "ula"
    options = settings.from_config(config).sampling.options
    assert "adapt" not in options  # ula's own default: no adaptation
    config.sampling.adapt = False
    assert settings.from_config(config).sampling.options["adapt"] is False
    config.sampling.adapt = True
    with pytest.raises(settings.ConfigError, match="adapt=True is refused for .*'ula'"):
        settings.from_config(config)


def test_no_sde_class_checks_outside_sde_py():
    package = ROOT / "ebm_vs_score"
    pattern = re.compile(r"isinstance\([^)]*(VESDE|VPSDE|SubVPSDE)|type\(sde\)")
    offenders = [p.name for p in package.rglob("*.py")
                 if p.name != "sde.py" and pattern.search(p.read_text())]
    assert not offenders, offenders
