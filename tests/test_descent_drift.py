"""``benchmarks.descent_drift``: a time-invariant model's chain read at growing step counts."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import descent_drift


def test_step_counts_are_sorted_distinct_and_positive(capsys):
    assert descent_drift.parse_args(["--study_dir=D", "--steps=400,100,200,100"]).steps == \
        [100, 200, 400]
    with pytest.raises(SystemExit):
        descent_drift.parse_args(["--study_dir=D", "--steps=0,100"])
    assert "must be positive step counts" in capsys.readouterr().err


def test_class_counts_count_every_class_even_empty_ones():
    logits = np.eye(4)[[1, 1, 3, 1]]
    clf = types.SimpleNamespace(apply=lambda images: (None, logits), num_classes=4)
    assert descent_drift.class_counts(clf, np.zeros((4, 8, 8, 1))) == [0, 3, 0, 1]


def _ctx(energy, conservative):
    fns = types.SimpleNamespace(energy=energy, conservative=conservative)
    return types.SimpleNamespace(model=types.SimpleNamespace(fns=fns), params=None)


def test_mean_energy_of_an_energy_and_none_for_a_field():
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 1)).astype(np.float32)
    energy = lambda params, x, t: 0.5 * jnp.sum(x**2, axis=(1, 2, 3))  # noqa: E731
    np.testing.assert_allclose(descent_drift.mean_energy(_ctx(energy, True), x),
                               np.mean(0.5 * (x**2).sum((1, 2, 3))), rtol=1e-6)
    assert descent_drift.mean_energy(_ctx(None, False), x) is None
    assert descent_drift.mean_energy(_ctx(energy, False), x) is None
