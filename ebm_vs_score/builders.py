"""From a config to the objects the math modules need: SDE, network, score/energy, loss.

One place maps config names to functions (each by a plain dict in the module that owns
it), so that train, eval, sample and study build exactly the same model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ebm_vs_score import configuration, models
from ebm_vs_score import parameterization as param_lib
from ebm_vs_score import sde as sde_lib


class Model(NamedTuple):
    """A network with its noise process and the score/energy functions it yields."""

    net: Any
    sde: sde_lib.SDE
    fns: param_lib.ModelFns
    example_shape: tuple[int, ...]


def example_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Shape of one example: (D,) for toy data, (H, W, C) for images."""
    if configuration.is_toy(config):
        return (int(config.data.toy_dim),)
    size = int(config.data.image_size)
    return (size, size, int(config.data.num_channels))


def build_model(config: ml_collections.ConfigDict) -> Model:
    """Builds network, SDE and the parameterization named by the config."""
    sde = sde_lib.get_sde(config.sde)
    scalar = param_lib.SCALAR_OUTPUT[config.model.parameterization]
    net = models.get_network(config.model, scalar_output=scalar)
    if config.model.parameterization == "conservative":
        # E = ||F||^2 / 2: a zero-initialized output layer makes F = 0 a stationary point
        # of every objective (score and all parameter gradients vanish there).
        net = net.clone(zero_init_output=False)
    sigma_data = float(config.model.sigma_data)
    if is_drl(config):
        # DRL energies are indexed by level, not time: the "sde" is the DRL ladder.
        from ebm_vs_score import drl

        sde = drl.make_schedule(int(config.drl.num_levels))
        fns = drl.model_fns(config.model.parameterization, net, sde, sigma_data)
    else:
        base = {"energy_base": config.model.energy_base} if "energy_base" in config.model else {}
        fns = param_lib.get_model_fns(config.model.parameterization, net, sde, sigma_data, **base)
    return Model(net=net, sde=sde, fns=fns, example_shape=example_shape(config))


def is_drl(config: ml_collections.ConfigDict) -> bool:
    """Whether the model is trained by diffusion recovery likelihood (Gao et al. 2021)."""
    return config.training.objective == "drl"


def init_params(model: Model, key: jax.Array) -> Any:
    """Initial network parameters, from a batch of one example."""
    x = jnp.zeros((1,) + model.example_shape, jnp.float32)
    return model.net.init({"params": key}, x, jnp.zeros((1,)), train=False)["params"]


def build_loss_fn(config: ml_collections.ConfigDict, model: Model):
    """The objective named by ``training.objective`` as ``loss_fn(params, batch, key)``."""
    if is_drl(config):
        from ebm_vs_score import drl

        return drl.make_drl_loss(config.drl, model.fns.energy, schedule=model.sde)
    from ebm_vs_score import losses

    return losses.get_loss_fn(config.training, model.fns, model.sde)
