"""Flax Linen networks: DDPM U-Net, classifier-style ResNet energy, MLP for toys.

Every network is called as ``net.apply({'params': p}, x, noise_cond, train=False)``
(add ``rngs={'dropout': key}`` when ``train=True``), with ``x`` of shape (B, H, W, C) or
(B, D) and ``noise_cond`` of shape (B,) (``log sigma``). No network mixes examples.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ebm_vs_score.models.mlp import MLP
from ebm_vs_score.models.resnet import ENERGY_HEADS, ResNetEnergy
from ebm_vs_score.models.unet import UNet
from ebm_vs_score.settings import ModelSettings, require_section

__all__ = ["ENERGY_HEADS", "MLP", "NETWORKS", "ResNetEnergy", "UNet", "get_network"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_EMBED = ("num_groups", "embedding", "embedding_scale", "fourier_scale", "dtype")
_CONV = ("dropout", "remat") + _EMBED  # the MLP has no blocks worth rematerializing
# name -> (class, required fields, optional fields) of ModelSettings
NETWORKS = {
    "unet": (
        UNet,
        ("ch", "ch_mult", "num_res_blocks"),
        ("attn_resolutions", "resamp_with_conv") + _CONV,
    ),
    "resnet_energy": (ResNetEnergy, ("ch", "ch_mult", "num_res_blocks"),
                      ("energy_head",) + _CONV),
    "mlp": (MLP, ("hidden",), ("activation", "embedding_dim", "dropout") + _EMBED[1:]),
}
_TUPLES = ("ch_mult", "attn_resolutions", "hidden")


def _read_fields(model: ModelSettings, name: str, required: tuple, optional: tuple) -> dict:
    """The network's keyword arguments: required fields (error if None) and the optional
    fields that are set (None: the network's default)."""
    missing = [f for f in required if getattr(model, f) is None]
    if missing:
        raise ValueError(
            f"Model settings for network {name!r} lack required field(s) {missing}; "
            f"set e.g. config.model.{missing[0]}."
        )
    kwargs = {f: getattr(model, f) for f in required}
    kwargs.update({f: getattr(model, f) for f in optional if getattr(model, f) is not None})
    for f in _TUPLES:
        if f in kwargs:
            kwargs[f] = tuple(kwargs[f])
    if "dtype" in kwargs:
        if kwargs["dtype"] not in DTYPES:
            raise ValueError(f"Unknown model dtype {kwargs['dtype']!r}; valid: {tuple(DTYPES)}.")
        kwargs["dtype"] = DTYPES[kwargs["dtype"]]
    return kwargs


def get_network(model: ModelSettings, *, scalar_output: bool = False) -> nn.Module:
    """Builds the network named by ``model.name``.

    Fields read (of ``ebm_vs_score.settings.ModelSettings``; None takes the network's own
    default):
      name: ``'unet'``, ``'resnet_energy'`` or ``'mlp'`` (required).
      ch, ch_mult, num_res_blocks: widths and depth (required for unet / resnet_energy).
      attn_resolutions: spatial sizes with self-attention (unet only).
      dropout: dropout rate.
      num_groups: GroupNorm groups (unet / resnet_energy), clipped to a channel divisor.
      embedding: ``'sinusoidal'`` or ``'fourier'``; embedding_scale: multiplier of
        ``noise_cond`` before the sinusoidal embedding; fourier_scale: scale of the Fourier
        frequencies; embedding_dim (mlp).
      hidden: hidden widths (required for mlp); activation: ``'swish'`` or ``'softplus'``.
      resamp_with_conv: conv in Down/Upsample (unet).
      energy_head: the ResNet energy's scalar head.
      dtype: compute dtype, ``'float32'`` or ``'bfloat16'``; parameters stay float32.
      remat: rematerialize the ResNet/attention blocks (unet / resnet_energy; ignored by
        the mlp), trading compute for activation memory (issue #17); values unchanged.

    Args:
      model: the ``model.*`` settings (``settings.from_config(config).model``).
      scalar_output: for ``'mlp'``, output an energy of shape (B,) instead of a field shaped
        like x. ``'resnet_energy'`` is always scalar and ``'unet'`` always a field.

    Returns:
      An unbound Flax module.

    Raises:
      TypeError: ``model`` is not a ModelSettings.
      ValueError: unknown name, missing required field, bad dtype, or a scalar U-Net.
    """
    require_section(model, ModelSettings, "model")
    name = model.name
    if name not in NETWORKS:
        raise ValueError(f"Unknown network {name!r}; valid names: {sorted(NETWORKS)}.")
    if name == "unet" and scalar_output:
        raise ValueError(
            "The 'unet' network outputs a field shaped like x, not a scalar; use "
            "'resnet_energy' or 'mlp' for a scalar energy network."
        )
    cls, required, optional = NETWORKS[name]
    kwargs = _read_fields(model, name, required, optional)
    if name == "mlp":
        kwargs["out"] = "scalar" if scalar_output else "vector"
    return cls(**kwargs)
