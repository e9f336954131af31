"""Trace estimators (ebm_vs_score.estimators): probes with E[v v^T] = I, the exact
divergence by D JVPs, Hutchinson divergence and the (tr JJ^T, tr JJ) pair, on linear
fields whose traces are known in closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import estimators

D, B = 4, 3
_A = jax.random.normal(jax.random.key(0), (D, D))
_X = jax.random.normal(jax.random.key(1), (B, D))


def _linear(y):
    return y @ _A.T


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sphere"])
def test_probes_have_identity_second_moment(kind):
    v = estimators.probes(jax.random.key(2), (20_000, 1, D), kind)
    second = np.einsum("mbi,mbj->ij", np.asarray(v), np.asarray(v)) / v.shape[0]
    np.testing.assert_allclose(second, np.eye(D), atol=0.05)
    if kind == "sphere":
        np.testing.assert_allclose(np.linalg.norm(np.asarray(v), axis=-1), np.sqrt(D), rtol=1e-5)


def test_unknown_probe_kind_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: \\['rademacher', 'gaussian', 'sphere'\\]"):
        estimators.probes(jax.random.key(0), (1, B, D), "cube")


def test_exact_divergence_of_a_linear_field_is_its_trace():
    fx, div = estimators.divergence(_linear, _X)
    np.testing.assert_allclose(fx, _linear(_X), rtol=1e-6)
    np.testing.assert_allclose(div, jnp.full((B,), jnp.trace(_A)), rtol=1e-5)


def test_divergence_of_a_nonlinear_field_matches_its_jacobian():
    field = lambda y: jnp.tanh(y @ _A.T) * y  # noqa: E731 - example-wise, not linear
    _, div = estimators.divergence(field, _X)
    jac = jax.vmap(jax.jacfwd(lambda xi: field(xi[None])[0]))(_X)
    np.testing.assert_allclose(div, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-5)


def test_hutchinson_divergence_is_unbiased():
    """Mean over probes of v.(Av) -> tr A; with M probes within 4 standard errors."""
    v = estimators.probes(jax.random.key(3), (20_000, B, D), "rademacher")
    _, quad = estimators.jvp_quadratic(_linear, _X, v)
    se = np.asarray(quad).std(0) / np.sqrt(quad.shape[0])
    _, div = estimators.divergence(_linear, _X, v)
    assert np.all(np.abs(np.asarray(div) - float(jnp.trace(_A))) < 4 * se)


def test_hutchinson_traces_of_a_linear_field():
    """E||A^T v||^2 = tr(A A^T), E (A^T v).(A v) = tr(A A)."""
    tr_jjt, tr_jj = estimators.hutchinson_traces(_linear, _X, jax.random.key(4), 4000)
    np.testing.assert_allclose(tr_jjt, jnp.trace(_A @ _A.T), rtol=0.05)
    np.testing.assert_allclose(tr_jj, jnp.trace(_A @ _A), atol=0.05 * float(jnp.sum(_A**2)))
