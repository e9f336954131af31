"""models/conv.py: a convolution whose derivatives XLA:CPU keeps canonical inside loops.

Against two independent implementations (``lax.conv_general_dilated`` and Flax's
``nn.Conv``): values and every derivative the project takes (grad, jvp, jvp of a grad,
grad of a grad, grad of a jvp, jacfwd, vmap over directions and over kernels), strides 1
and 2, even and odd image sizes. Then the point of the module: in a ``lax.scan`` body,
every convolution of an energy's score, of its JVPs and of vmapped JVPs is in the
canonical form ``b01f_01io->b01f``, where Flax's layer leaves ``01oi`` ones.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score.models import channelwise
from ebm_vs_score.models import conv as conv_lib

CANONICAL = "dim_labels=b01f_01io->b01f"
KEYS = jax.random.split(jax.random.PRNGKey(0), 6)


def _conv_labels(fn, *args) -> list[str]:
    text = jax.jit(fn).lower(*args).compile().as_text()
    return re.findall(r"convolution\([^)]*\), window=\{[^}]*\}, (dim_labels=[^,\s]+)", text)


def _pair(stride: int, size: int):
    """(ours, lax's) as functions of (x, w), a smooth nonlinearity after each."""
    x = jax.random.normal(KEYS[0], (3, size, size, 4))
    w = jax.random.normal(KEYS[1], (3, 3, 4, 5)) / 3
    strides = (stride, stride)
    pads = conv_lib.padding_pairs(x.shape[1:3], w.shape[:2], strides, "SAME")
    ours = lambda x, w: jnp.tanh(conv_lib.conv(x, w, strides, pads))
    ref = lambda x, w: jnp.tanh(jax.lax.conv_general_dilated(
        x, w, strides, "SAME", dimension_numbers=conv_lib.DIMENSION_NUMBERS))
    return ours, ref, x, w


def _derivatives(f, x, w, dx, dw):
    energy = lambda x, w: jnp.sum(f(x, w) ** 2)
    score = lambda x, w: jax.grad(energy)(x, w)
    one = lambda y: score(y, w)
    return {
        "value": f(x, w),
        "grad": jax.grad(energy, (0, 1))(x, w),
        "jvp": jax.jvp(f, (x, w), (dx, dw)),
        "jvp of grad": jax.jvp(score, (x, w), (dx, dw)),
        "grad of grad": jax.grad(lambda w: jnp.sum(score(x, w) ** 2))(w),
        "grad of jvp": jax.grad(lambda w: jnp.sum(jax.jvp(lambda y: f(y, w), (x,),
                                                          (dx,))[1] ** 2))(w),
        "jacfwd of grad": jax.jacfwd(one)(x[:1]),
        "vmapped jvps": jax.vmap(lambda v: jax.jvp(one, (x,), (v,))[1])(jnp.stack([dx, -dx])),
        "vmap over kernels": jax.vmap(score, (None, 0))(x, jnp.stack([w, 2 * w])),
        "remat": jax.grad(lambda w: jnp.sum(jax.checkpoint(score)(x, w) ** 2))(w),
    }


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7), (1, 5)])
def test_values_and_derivatives_equal_lax_convolution(stride, size):
    ours, ref, x, w = _pair(stride, size)
    dx = jax.random.normal(KEYS[2], x.shape)
    dw = jax.random.normal(KEYS[3], w.shape)
    got, want = _derivatives(ours, x, w, dx, dw), _derivatives(ref, x, w, dx, dw)
    for name in want:
        for a, b in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name]), strict=True):
            assert np.all(np.isfinite(a)), name
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_jvp_through_the_layer_matches_flax_conv(monkeypatch):
    """The model's layer (``channelwise.Conv`` on the canonical path) against ``nn.Conv``:
    values, a JVP, and a JVP of an input gradient (an energy's score), stride 1 and 2."""
    monkeypatch.setattr(channelwise, "canonical_convs", lambda: True)
    x = jax.random.normal(KEYS[0], (2, 9, 9, 3))
    v = jax.random.normal(KEYS[2], x.shape)
    for stride in (1, 2):
        ours = channelwise.Conv(4, (3, 3), strides=(stride, stride))
        flax_conv = nn.Conv(4, (3, 3), strides=(stride, stride), padding="SAME")
        params = jax.tree.map(lambda p: p + 0.3, flax_conv.init(KEYS[4], x)["params"])
        for m in (ours, flax_conv):
            assert jax.tree.map(jnp.shape, m.init(KEYS[4], x)["params"]) == jax.tree.map(
                jnp.shape, params)
        apply = {m: (lambda y, m=m, p=params: m.apply({"params": p}, y))
                 for m in (ours, flax_conv)}
        score = {m: jax.grad(lambda y, f=f: jnp.sum(jnp.sin(f(y)))) for m, f in apply.items()}
        for fns in (apply, score):
            (y1, t1), (y2, t2) = (jax.jvp(fns[m], (x,), (v,)) for m in (ours, flax_conv))
            np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(t1, t2, rtol=1e-5, atol=1e-5)


def _two_layer_energy(conv):
    """E(x) = sum(tanh(conv2(tanh(conv1(x))))^2), a stride-2 second layer, like a U-Net's."""
    w1 = jax.random.normal(KEYS[4], (3, 3, 2, 8)) / 4
    w2 = jax.random.normal(KEYS[5], (3, 3, 8, 8)) / 8

    def energy(x):
        h = jnp.tanh(conv(x, w1, 1))
        return jnp.sum(jnp.tanh(conv(h, w2, 2)) ** 2)

    return energy


def _ours(x, w, stride):
    strides = (stride, stride)
    return conv_lib.conv(x, w, strides, conv_lib.padding_pairs(x.shape[1:3], w.shape[:2],
                                                               strides, "SAME"))


def _lax(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=conv_lib.DIMENSION_NUMBERS)


def _in_scan(energy, what: str):
    """A 3-step ``lax.scan`` that evaluates the score, a JVP of it, or vmapped JVPs of it."""
    score = jax.grad(energy)

    def body(x, _):
        if what == "score":
            return x - 1e-2 * score(x), None
        if what == "jvp":
            return x - 1e-2 * jax.jvp(score, (x,), (jnp.ones_like(x),))[1], None
        _, lin = jax.linearize(score, x)  # the exact divergence's vmapped directions
        return x - 1e-2 * jax.vmap(lin)(jnp.stack([x, -x])).sum(0), None

    return lambda x: jax.lax.scan(body, x, None, length=3)[0]


@pytest.mark.parametrize("what", ["score", "jvp", "vmapped jvps"])
def test_loop_bodies_hold_only_canonical_convolutions(what):
    x = jax.random.normal(KEYS[0], (4, 8, 8, 2))
    ours = _conv_labels(_in_scan(_two_layer_energy(_ours), what), x)
    plain = _conv_labels(_in_scan(_two_layer_energy(_lax), what), x)
    assert ours and all(label == CANONICAL for label in ours), ours
    assert any(label != CANONICAL for label in plain), plain  # the test can fail
    np.testing.assert_allclose(jax.jit(_in_scan(_two_layer_energy(_ours), what))(x),
                               jax.jit(_in_scan(_two_layer_energy(_lax), what))(x),
                               rtol=1e-5, atol=1e-5)


def _small_digits_model(family: str):
    """The digits network of ``family`` at width 8: model, initial params, 4 inputs, a key."""
    from ebm_vs_score import builders, config_base, settings

    config = config_base.get_config("digits", family)
    config.model.ch = 8
    model = builders.build_model(settings.from_config(config))
    params = builders.init_params(model, jax.random.PRNGKey(0))
    x = jax.random.normal(KEYS[0], (4,) + model.example_shape)
    return model, params, x, jax.random.PRNGKey(1)


# The C U-Net cases take minutes on 2 cores (-m slow); the C-ResNet cases run by default.
@pytest.mark.parametrize("family", [pytest.param("energy", marks=pytest.mark.slow),
                                    "resnet_energy"])
def test_a_digits_energy_inside_mala_and_the_ode_likelihood_is_canonical(family):
    """The real networks (digits U-Net of C, the C-ResNet), small: MALA and the ODE NLL's
    solver loop compile to canonical convolutions only (XLA:CPU's fast path)."""
    from ebm_vs_score import likelihood, samplers
    from ebm_vs_score import parameterization as param_lib

    model, params, x, key = _small_digits_model(family)

    def mala(params, key):
        return samplers.sample("mala", key, x.shape, sde=model.sde, num_steps=2,
                               score_fn=param_lib.bind(model.fns.score, params),
                               energy_fn=param_lib.bind(model.fns.energy, params))

    def nll(params, x, key):
        return likelihood.ode_log_prob(param_lib.bind(model.fns.score, params), x,
                                       sde=model.sde, key=key, num_probes=1, rtol=1e-2,
                                       atol=1e-2)

    for fn, args in ((mala, (params, key)), (nll, (params, x, key))):
        labels = _conv_labels(fn, *args)
        assert labels and all(label == CANONICAL for label in labels), set(labels)


@pytest.mark.parametrize("family", [pytest.param("energy", marks=pytest.mark.slow),
                                    "resnet_energy"])
def test_loops_give_the_values_of_flax_convolutions(family, monkeypatch):
    """Same parameters and keys, the canonical layer against Flax's convolution (the path
    used off the CPU): Euler-Maruyama, MALA (its acceptance decisions included), the
    fixed-grid probability-flow ODE and the ODE likelihood's field (the drift and its
    one-probe divergence, a JVP of the score) in Euler steps, each a ``lax.scan`` over the
    energy's score, agree to float tolerance. (The adaptive solver is left out: at initial
    parameters the ODE is stiff, at tolerance 1e-5 it reaches its step limit, and at loose
    tolerances its step choices amplify rounding differences.)"""
    from ebm_vs_score import estimators, samplers
    from ebm_vs_score import parameterization as param_lib

    model, params, x, key = _small_digits_model(family)

    def loops(params, x, key, canonical):  # canonical: a static argument, so a fresh trace
        score = param_lib.bind(model.fns.score, params)
        energy = param_lib.bind(model.fns.energy, params)
        em, _ = samplers.sample("euler_maruyama", key, x.shape, sde=model.sde, num_steps=3,
                                score_fn=score)
        mala, info = samplers.sample("mala", key, x.shape, sde=model.sde, num_steps=3,
                                     score_fn=score, energy_fn=energy, step_size=1e-3,
                                     adapt=False)
        ode, _ = samplers.sample("ode", key, x.shape, sde=model.sde, num_steps=3,
                                 score_fn=score, ode_solver="heun")
        drift = samplers.ode_drift(score, model.sde)
        v = estimators.probes(key, (1,) + x.shape, "rademacher", x.dtype)

        def nll_step(carry, _):  # the ODE likelihood's field: drift and its divergence
            y, delta = carry
            dy, div = estimators.divergence(lambda u: drift(u, jnp.full(u.shape[:1], 0.5)),
                                            y, v)
            return (y + 1e-2 * dy, delta + 1e-2 * div), None

        nll, _ = jax.lax.scan(nll_step, (x, jnp.zeros(x.shape[:1])), None, length=3)
        return {"em": em, "mala": mala, "acceptance": info["acceptance"], "ode": ode,
                "nll_y": nll[0], "nll_delta": nll[1]}

    values = {}
    for canonical in (True, False):
        monkeypatch.setattr(channelwise, "canonical_convs", lambda c=canonical: c)
        compiled = jax.jit(loops, static_argnums=3).lower(params, x, key, canonical).compile()
        labels = re.findall(r"convolution\([^)]*\), window=\{[^}]*\}, (dim_labels=[^,\s]+)",
                            compiled.as_text())
        assert all(label == CANONICAL for label in labels) == canonical, set(labels)
        values[canonical] = compiled(params, x, key)
    for name, want in values[False].items():
        got = values[True][name]
        assert np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
