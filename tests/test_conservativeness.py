"""Asym / NAsym (Chao et al. 2023, eq. 6-7): exact and Hutchinson estimators."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _weights import random_params

from ebm_vs_score import conservativeness as cons
from ebm_vs_score import estimators
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import sde as sde_lib
from ebm_vs_score.models import MLP, ResNetEnergy, UNet

D = 5


def _exact_with_norm(field, x):
    """Jitted exact (asym, nasym) and tr(J J^T), each (B,)."""

    def run(y):
        jac = cons.batch_jacobian(field, y)
        return cons.asymmetry(field, y) + (jnp.sum(jac**2, axis=(1, 2)),)

    return [np.asarray(v) for v in jax.jit(run)(x)]


def _linear(seed=0):
    a = jax.random.normal(jax.random.key(seed), (D, D))
    x = jax.random.normal(jax.random.key(seed + 1), (4, D))
    return a, x, (lambda y: y @ a.T)


def _linear_truth(a):
    skew = jnp.sum((a - a.T) ** 2)
    return 0.5 * skew, skew / (4 * jnp.sum(a**2))


def test_linear_field_exact():
    a, x, field = _linear()
    asym, nasym = jax.jit(lambda y: cons.asymmetry(field, y))(x)
    want_asym, want_nasym = _linear_truth(a)
    assert asym.shape == nasym.shape == (4,)
    np.testing.assert_allclose(asym, want_asym, rtol=1e-5)
    np.testing.assert_allclose(nasym, want_nasym, rtol=1e-5)


def test_linear_field_hutchinson_within_three_standard_errors():
    a, x, field = _linear()
    want_asym, _ = _linear_truth(a)
    num_probes = 2000
    # Per-probe values (one probe each, independent keys) give the standard error.
    keys = jax.random.split(jax.random.key(7), num_probes)
    per_probe = jax.jit(jax.vmap(lambda k: cons.asymmetry(field, x, key=k, num_probes=1)[0]))(keys)
    se = np.std(np.asarray(per_probe), axis=0) / np.sqrt(num_probes)
    assert np.all(se > 0)
    asym, nasym = jax.jit(lambda y, k: cons.asymmetry(field, y, key=k, num_probes=num_probes))(
        x, jax.random.key(3)
    )
    assert np.all(np.abs(np.asarray(asym) - float(want_asym)) < 3 * se)
    assert np.all((np.asarray(nasym) > 0) & (np.asarray(nasym) < 1))


def test_scan_over_probes_equals_mean_of_single_probes():
    _, x, field = _linear()
    key = jax.random.key(5)
    traces = jax.jit(cons.hutchinson_traces, static_argnums=(0, 3))
    tr_jjt, tr_jj = traces(field, x, key, 3)
    singles = [traces(field, x, k, 1) for k in jax.random.split(key, 3)]
    np.testing.assert_allclose(tr_jjt, np.mean([s[0] for s in singles], 0), rtol=1e-5)
    np.testing.assert_allclose(tr_jj, np.mean([s[1] for s in singles], 0), rtol=1e-5)


def test_rotation_has_nasym_one():
    w = jnp.array([[0.0, -2.0], [2.0, 0.0]])
    x = jax.random.normal(jax.random.key(0), (3, 2))
    asym, nasym = cons.asymmetry(lambda y: y @ w.T, x)
    np.testing.assert_allclose(nasym, 1.0, rtol=1e-6)
    np.testing.assert_allclose(asym, 0.5 * jnp.sum((w - w.T) ** 2), rtol=1e-6)


def test_gradient_of_random_energy_has_zero_asym():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    w1, w2 = jax.random.normal(k1, (D, 16)), jax.random.normal(k2, (16,))

    def energy(y):
        return jnp.sum(jnp.tanh(y @ w1) * w2, axis=-1) + 0.1 * jnp.sum(y**4, -1)

    field = lambda y: -jax.grad(lambda z: energy(z).sum())(y)
    x = jax.random.normal(k3, (6, D))
    asym, nasym, tr_jjt = _exact_with_norm(field, x)
    assert np.all(np.abs(asym) <= 1e-5 * tr_jjt)
    assert np.all(np.abs(nasym) < 1e-5)


def _energy_models(shape):
    """C (vector MLP) and C-ResNet (scalar MLP) with random, non-zero weights."""
    sde = sde_lib.VPSDE()
    out = []
    for name, net in [
        ("conservative", MLP(hidden=(16, 16), out="vector", embedding_dim=8)),
        ("resnet_energy", MLP(hidden=(16, 16), out="scalar", embedding_dim=8)),
    ]:
        params = random_params(net, jnp.zeros((1,) + shape))
        out.append((name, param_lib.get_model_fns(name, net, sde, 1.0), params))
    return out




@pytest.mark.parametrize("shape", [(3,)])
def test_conservative_models_have_zero_asym(shape):
    x = jax.random.normal(jax.random.key(2), (4,) + shape)
    t = jnp.linspace(0.1, 0.9, 4)
    for name, fns, params in _energy_models(shape):
        assert fns.conservative
        field = lambda y, fns=fns, params=params: fns.score(params, y, t)
        asym, nasym, tr_jjt = _exact_with_norm(field, x)
        assert np.all(tr_jjt > 0), name
        assert np.all(np.abs(asym) <= 1e-5 * tr_jjt), name
        assert np.all(np.abs(nasym) < 1e-5), name


def test_unconstrained_model_asym_is_half_the_skew_norm_of_its_jacobian():
    """Asym(x) = 1/2 ||J - J^T||_F^2 and NAsym = ||J - J^T||_F^2 / (4 ||J||_F^2) for a
    nonlinear U score, with J taken per example by ``jax.jacrev`` (another method than the
    batched ``jacfwd`` of ``asymmetry``), and Asym(Ax) = 1/2 ||A - A^T||_F^2 for the
    linear field of the model's own Jacobian at one point."""
    sde = sde_lib.VPSDE()
    net = MLP(hidden=(16, 16), embedding_dim=8)
    x = jax.random.normal(jax.random.key(2), (4, 3))
    params = random_params(net, x)
    fns = param_lib.get_model_fns("unconstrained", net, sde, 1.0)
    t = jnp.full((4,), 0.5)
    asym, nasym = jax.jit(lambda y: cons.asymmetry(lambda z: fns.score(params, z, t), y))(x)
    one = lambda xi, ti: fns.score(params, xi[None], ti[None])[0]  # noqa: E731
    jac = jax.vmap(jax.jacrev(one))(x, t)  # (B, D, D)
    skew = np.sum(np.asarray(jac - jnp.swapaxes(jac, 1, 2)) ** 2, axis=(1, 2))
    np.testing.assert_allclose(asym, 0.5 * skew, rtol=1e-4)
    np.testing.assert_allclose(nasym, skew / (4 * np.sum(np.asarray(jac) ** 2, (1, 2))),
                               rtol=1e-4)
    assert np.all(skew > 1e-3)  # a random U network is not a gradient field
    a = jac[0]
    lin_asym, lin_nasym = cons.asymmetry(lambda y: y @ a.T, x)
    np.testing.assert_allclose(lin_asym, 0.5 * skew[0], rtol=1e-4)
    np.testing.assert_allclose(lin_nasym, nasym[0], rtol=1e-4)


def test_field_that_does_not_keep_the_shape_is_refused():
    """A field must map a batch to a batch like it; the error names the argument."""
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="field maps x of shape \\(4, 3\\) to shape \\(4, 2\\)"):
        cons.asymmetry(lambda y: y[:, :2], x)
    with pytest.raises(ValueError, match="^field maps"):
        cons.asymmetry(lambda y: jnp.sum(y, -1), x, key=jax.random.key(0), num_probes=2)


def test_hutchinson_on_image_batch():
    """8x8x1 images: U is asymmetric, C has Asym 0 for every probe."""
    sde = sde_lib.VESDE(sigma_max=5.0)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([0.2, 0.5, 0.8])
    net = MLP(hidden=(16,), embedding_dim=8)
    params = random_params(net, x, seed=1)
    u, c = (param_lib.get_model_fns(n, net, sde, 1.0) for n in ("unconstrained", "conservative"))

    @jax.jit
    def run(y, k):
        return [
            cons.asymmetry(lambda z, f=f: f.score(params, z, t), y, key=k, num_probes=4)
            for f in (u, c)
        ]

    (asym_u, nasym_u), (_, nasym_c) = run(x, jax.random.key(4))
    assert asym_u.shape == nasym_u.shape == nasym_c.shape == (3,)
    assert np.all(np.isfinite(np.asarray(asym_u))) and np.all(np.asarray(asym_u) > 0)
    assert np.all((np.asarray(nasym_u) > 0) & (np.asarray(nasym_u) < 1))
    assert np.all(np.abs(np.asarray(nasym_c)) < 1e-5)


def test_missing_key_and_bad_probe_count():
    _, x, field = _linear()
    with pytest.raises(ValueError, match="needs a PRNG key"):
        cons.asymmetry(field, x, num_probes=4)
    with pytest.raises(ValueError, match="num_probes"):
        cons.asymmetry(field, x, num_probes=-1)


def test_asymmetry_over_noise_linear_field():
    """s(x, t) = A x / t: Asym(A) / t^2 at level t, NAsym(A) at every level (exact)."""
    a, _, _ = _linear()
    x0 = jax.random.normal(jax.random.key(1), (8, D))
    out = cons.asymmetry_over_noise(
        lambda x, t: (x @ a.T) / t[:, None],
        x0,
        sde=sde_lib.VPSDE(),
        key=jax.random.key(0),
        num_levels=4,
    )
    want_asym, want_nasym = _linear_truth(a)
    assert out["asym_per_level"].shape == out["nasym_per_level"].shape == out["t"].shape == (4,)
    np.testing.assert_allclose(out["t"], jnp.linspace(1e-3, 1.0, 4), rtol=1e-6)
    np.testing.assert_allclose(out["asym_per_level"], want_asym / out["t"] ** 2, rtol=1e-4)
    np.testing.assert_allclose(out["asym"], jnp.mean(want_asym / out["t"] ** 2), rtol=1e-4)
    np.testing.assert_allclose(out["nasym"], want_nasym, rtol=1e-5)


@pytest.mark.analytic
@pytest.mark.slow
def test_asymmetry_over_noise_time_dependent_hutchinson():
    """Asym of s(x, t) = A x / t at level t is Asym(A) / t^2, with Hutchinson probes."""
    a, _, _ = _linear()
    x0 = jax.random.normal(jax.random.key(1), (16, D))
    out = cons.asymmetry_over_noise(
        lambda x, t: (x @ a.T) / t[:, None],
        x0,
        sde=sde_lib.VESDE(sigma_max=5.0),
        key=jax.random.key(0),
        num_levels=3,
        num_probes=64,
    )
    want = _linear_truth(a)[0] / out["t"] ** 2
    np.testing.assert_allclose(out["asym_per_level"], want, rtol=0.1)


@pytest.mark.analytic
@pytest.mark.slow
@pytest.mark.parametrize("name", ["conservative", "resnet_energy"])
def test_conv_energy_models_have_zero_asym(name):
    """The image networks: C on a tiny U-Net and C-ResNet on a tiny ResNet energy."""
    sde = sde_lib.VPSDE()
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    t = jnp.array([0.3, 0.7])
    kw = dict(ch=4, ch_mult=(1,), num_res_blocks=1, dropout=0.0, num_groups=2)
    net = UNet(attn_resolutions=(), **kw) if name == "conservative" else ResNetEnergy(**kw)
    params = random_params(net, x, seed=1)
    fns = param_lib.get_model_fns(name, net, sde, 1.0)
    asym, _, tr_jjt = _exact_with_norm(lambda y: fns.score(params, y, t), x)
    assert np.all(tr_jjt > 0)
    assert np.all(np.abs(asym) <= 1e-5 * tr_jjt)


def test_unrolled_and_scanned_probes_agree(monkeypatch):
    """The written-out probes (K <= UNROLL_PROBES) and the lax.scan draw the same probes."""
    w = jax.random.normal(jax.random.PRNGKey(3), (5, 5))
    field = lambda y: jnp.tanh(y @ w)  # noqa: E731
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 5))
    key = jax.random.PRNGKey(5)
    unrolled = cons.hutchinson_traces(field, x, key, 3)
    monkeypatch.setattr(estimators, "UNROLL_PROBES", 0)
    scanned = cons.hutchinson_traces(field, x, key, 3)
    for a, b in zip(unrolled, scanned, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
