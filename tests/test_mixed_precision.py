"""Mixed precision (``model.dtype='bfloat16'``: bf16 compute, float32 parameters) changes
scores, energies and training only within bfloat16's rounding (8 bits of mantissa)."""

import jax
import numpy as np
import pytest

from ebm_vs_score import builders, config_base, settings, train

STEPS = 25


def _config(family: str, dtype: str):
    config = config_base.get_config("digits", family)
    config.model.update(ch=8, ch_mult=(1, 2), num_res_blocks=1, num_groups=4, dtype=dtype)
    config.training.batch_size = 16
    return settings.from_config(config)


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# The score case (31 s) is -m slow; the energy's double backward, the harder one, stays.
@pytest.mark.parametrize("family", [pytest.param("score", marks=pytest.mark.slow), "energy"])
def test_bf16_score_and_energy_match_float32(family):
    models = {d: builders.build_model(_config(family, d)) for d in ("float32", "bfloat16")}
    params = builders.init_params(models["float32"], jax.random.PRNGKey(0))
    # off the initialization (its zero output layer would make U's score exactly 0)
    leaves, tree = jax.tree.flatten(params)
    noise = np.random.default_rng(2)
    params = jax.tree.unflatten(tree, [p + 0.05 * noise.standard_normal(p.shape).astype(p.dtype)
                                       for p in leaves])
    x = jax.random.normal(jax.random.PRNGKey(1), (8,) + models["float32"].example_shape)
    for t in (0.05, 0.5, 1.0):
        ts = np.full((8,), t, np.float32)
        out = {d: jax.jit(m.fns.score)(params, x, ts) for d, m in models.items()}
        assert out["bfloat16"].dtype == np.float32
        assert _relative_error(out["bfloat16"], out["float32"]) < 3e-2, t
        if family == "energy":
            energy = {d: jax.jit(m.fns.energy)(params, x, ts) for d, m in models.items()}
            assert _relative_error(energy["bfloat16"], energy["float32"]) < 3e-2, t


def _losses(family: str, dtype: str) -> tuple[list[float], object]:
    config = _config(family, dtype)
    model = builders.build_model(config)
    mesh = train.make_mesh()
    state, step = train.fresh_state_and_step(config, model, mesh)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        x = rng.uniform(-1, 1, (16,) + model.example_shape).astype(np.float32)
        state, metrics = step(state, train.global_batch({"x": x}, mesh))
        losses.append(float(metrics["loss"]))
    return losses, state


# 60 s of training each; bf16 numerics of both stay in the default run (the test above).
@pytest.mark.slow
@pytest.mark.parametrize("family", ["score", "energy"])
def test_bf16_training_follows_float32(family):
    """Same init, same batches, same noise: the loss curves agree to a few percent and the
    float32 parameters stay float32."""
    f32, _ = _losses(family, "float32")
    bf16, state = _losses(family, "bfloat16")
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(state.params))
    assert np.mean(bf16[-5:]) < np.mean(bf16[:5])  # it trains
    np.testing.assert_allclose(bf16, f32, rtol=5e-2)
