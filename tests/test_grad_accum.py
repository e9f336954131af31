"""Gradient accumulation (training.grad_accum_steps) inside the compiled train step.

Math: for a loss that is a mean over examples, L(B) = (1/k) sum_j L(B_j) when the batch
B is split into k micro-batches B_j of equal size, so its gradient is the mean of the
micro-batch gradients, and one optimizer step from the accumulated gradient reaches the
same parameters as one from the full batch. The losses of the codebase draw their noise
per batch from the step key, so micro-batch j (key fold_in(key, j)) draws other noise
than the full batch would for the same examples; to state the identity exactly the tests
use the DSM loss with the noise (t, z) of each example carried IN the batch, on the real
U and C parameterizations (C: the score is -grad_x E, the gradient a double backward).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import builders, config_base, settings, train
from ebm_vs_score.sde import batch_mul

BATCH = 8


def small_config(family, warmup=None):
    """The settings of a small digits U-Net of ``family`` (optim.warmup = ``warmup``)."""
    config = config_base.get_config("digits", family)
    config.model.ch, config.model.ch_mult, config.model.num_groups = 8, (1,), 4
    config.model.attn_resolutions, config.model.num_res_blocks = (), 1
    if warmup is not None:
        config.optim.warmup = warmup
    return settings.from_config(config)


def dsm_with_noise_in_batch(model):
    """Continuous DSM, mean over examples, whose noise (t, z) comes with each example."""
    def loss_fn(params, batch, key):
        del key  # deterministic: every example carries its own noise
        x0, t, z = batch["x"], batch["t"], batch["z"]
        mean, std = model.sde.marginal_prob(x0, t)
        x_t = mean + batch_mul(std, z)
        score = model.fns.score(params, x_t, t)
        per = jnp.sum((batch_mul(std, score) + z) ** 2, axis=(1, 2, 3))
        return jnp.mean(per), {"per_mean": jnp.mean(per)}

    return loss_fn


def make_batch():
    rng = np.random.default_rng(0)
    return {"x": rng.uniform(-1, 1, (BATCH, 8, 8, 1)).astype(np.float32),
            "t": rng.uniform(0.05, 1.0, BATCH).astype(np.float32),
            "z": rng.standard_normal((BATCH, 8, 8, 1)).astype(np.float32)}


def one_step(config, loss_fn, model, batch, k):
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optim)
    state = train.replicate(train.init_state(model, tx, 0), mesh)
    step = train.compile_train_step(loss_fn, tx, 0.99, mesh, state, grad_accum_steps=k,
                                    batch_size=BATCH)
    before = jax.device_get(state.params)
    for _ in range(2):  # Adam's warm-up makes step 0 a zero update; step 1 moves
        state, metrics = step(state, train.global_batch(batch, mesh))
    return before, jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.slow  # two compiled steps per family: ~4 min each on the loaded 2-core CPU
@pytest.mark.parametrize("family", ["score", "energy"])
def test_accumulated_step_equals_full_batch_step(family):
    config = small_config(family, warmup=1)  # the full learning rate from step 1 on
    model = builders.build_model(config)
    loss_fn = dsm_with_noise_in_batch(model)
    batch = make_batch()
    before, full, m1 = one_step(config, loss_fn, model, batch, 1)
    _, accum, m4 = one_step(config, loss_fn, model, batch, 4)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(full), jax.tree.leaves(before), strict=True))
    assert moved > 1e-4  # the step did change the parameters
    # Adam divides by sqrt(v): where a gradient is ~0 its update is ill-conditioned, so the
    # parameters are compared to 1% of the learning rate (1e-3) in absolute terms.
    for a, b in zip(jax.tree.leaves(accum), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_accumulated_gradient_is_mean_of_strided_micro_batch_gradients():
    config = small_config("energy")
    model = builders.build_model(config)
    loss_fn = dsm_with_noise_in_batch(model)
    params = builders.init_params(model, jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, make_batch())
    key = jax.random.PRNGKey(1)
    loss, _, grads = jax.jit(lambda p: train.accumulated_grads(loss_fn, p, batch, key, 2))(
        params)
    halves = [jax.tree.map(lambda x, j=j: x[j::2], batch) for j in range(2)]
    parts = [jax.grad(lambda p, b=b: loss_fn(p, b, key)[0])(params) for b in halves]
    expected = jax.tree.map(lambda a, b: (a + b) / 2, *parts)
    # float32 sums in another order: the error scales with each tensor's largest entry
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(b))))
    np.testing.assert_allclose(loss, np.mean([loss_fn(params, b, key)[0] for b in halves]),
                               rtol=1e-6)


def test_micro_batches_draw_their_own_noise_with_the_real_loss():
    """With the codebase's DSM loss, micro-batch j uses fold_in(key, j): not one draw reused."""
    config = small_config("score")
    model = builders.build_model(config)
    loss_fn = builders.build_loss_fn(config, model)
    params = builders.init_params(model, jax.random.PRNGKey(0))
    x = jnp.asarray(make_batch()["x"])
    key = jax.random.PRNGKey(3)
    loss, _, _ = train.accumulated_grads(loss_fn, params, {"x": x}, key, 2)
    expected = np.mean([loss_fn(params, {"x": x[j::2]}, jax.random.fold_in(key, j))[0]
                        for j in range(2)])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    reused = np.mean([loss_fn(params, {"x": x[j::2]}, key)[0] for j in range(2)])
    assert abs(float(loss) - float(reused)) > 1e-6


def test_indivisible_batch_is_one_clear_error():
    config = small_config("score")
    model = builders.build_model(config)
    mesh = train.make_mesh(jax.devices()[:1])
    tx = train.make_optimizer(config.optim)
    state = train.replicate(train.init_state(model, tx, 0), mesh)
    with pytest.raises(ValueError, match="not divisible by training.grad_accum_steps=3"):
        train.compile_train_step(builders.build_loss_fn(config, model), tx, 0.99, mesh, state,
                                 grad_accum_steps=3, batch_size=8)
    with pytest.raises(ValueError, match="must be >= 1"):
        train.compile_train_step(builders.build_loss_fn(config, model), tx, 0.99, mesh, state,
                                 grad_accum_steps=0)
