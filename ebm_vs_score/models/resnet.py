"""Classifier-style ResNet energy ``N(x, noise_cond) -> (B,)`` (Salimans & Ho 2021, "C").

The "C-ResNet" family of Salimans & Ho 2021, "Should EBMs model the energy or the
score?": a scalar network whose input gradient is the score. It reuses the time-
conditioned ResNet block of the DDPM U-Net (Ho et al. 2020) and uses GroupNorm only, so
that examples never interact and ``-grad`` of the batch sum is each example's score.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_vs_score.models.layers import (
    Downsample,
    checked_time_embedding,
    conv3x3,
    default_init,
    group_norm,
    resnet_block,
)

Dtype = Any
# The scalar head: 'mean' = GroupNorm -> swish -> mean-pool -> Dense (Salimans & Ho 2021);
# 'sum' = ReLU -> sum-pool -> inner product with Dense(swish(temb)) (Gao et al. 2021's code,
# ``net_res_temb2``): unbounded, it grows with the image's scale and size.
ENERGY_HEADS = ("mean", "sum")


class ResNetEnergy(nn.Module):
    """Time-conditioned ResNet with global mean pooling and a scalar head.

    Attributes:
      ch: base width; stage ``i`` has ``ch * ch_mult[i]`` channels.
      ch_mult: width multipliers, one per stage; stride-2 convs between stages.
      num_res_blocks: ResNet blocks per stage.
      dropout: dropout rate inside the ResNet blocks (active only with ``train=True``).
      num_groups: GroupNorm groups, clipped to a divisor of the channel count.
      embedding: ``'sinusoidal'`` (of ``embedding_scale * noise_cond``) or ``'fourier'``
        (Gaussian Fourier features of scale ``fourier_scale``, Song et al. 2021).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      remat: rematerialize each ResNet block (``jax.checkpoint``); same values and params.
      energy_head: 'mean' or 'sum' (``ENERGY_HEADS``); with ``num_groups=0`` (no
        normalization) 'sum' is Gao et al.'s network up to its spectral norm and lrelu.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    dropout: float = 0.1
    num_groups: int = 32
    embedding: str = "sinusoidal"
    embedding_scale: float = 250.0
    fourier_scale: float = 16.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    energy_head: str = "mean"

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond: jax.Array, train: bool = False) -> jax.Array:
        """Maps (B, H, W, C) images and (B,) noise levels to (B,) scalars."""
        temb = checked_time_embedding(self, x, noise_cond)
        h = conv3x3(self.ch, self.dtype)(x)
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                block = resnet_block(
                    self.remat, self.ch * mult, self.dropout, self.num_groups, self.dtype
                )
                h = block(h, temb, train)
            if level != len(self.ch_mult) - 1:
                h = Downsample(True, self.dtype)(h)
        if self.energy_head == "sum":
            h = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
            weights = nn.Dense(h.shape[-1], dtype=jnp.float32, kernel_init=default_init)(
                nn.swish(temb.astype(jnp.float32)))
            return jnp.sum(h * weights, axis=-1).astype(x.dtype)
        if self.energy_head != "mean":
            raise ValueError(f"model.energy_head={self.energy_head!r} is not valid; choose one "
                             f"of {list(ENERGY_HEADS)}")
        h = nn.swish(group_norm(h, self.num_groups, self.dtype))
        h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
        out = nn.Dense(1, dtype=jnp.float32, kernel_init=default_init)(h)  # float32 head
        return out[:, 0].astype(x.dtype)
