"""DDPM U-Net ``F(x, noise_cond)`` (Ho et al. 2020, App. B; score_sde ``ddpm.py`` layout).

The same network serves the unconstrained score model U and the conservative energy C
of Salimans & Ho 2021 (eq. 5-6); preconditioning lives in ``parameterization.py``, not
here. The output has the shape of the input and is zero at initialization (last conv
zero-initialized). With the defaults on 32x32x3 images it has 35.7M parameters, the
CIFAR-10 model of Ho et al. 2020.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_vs_score.models.layers import (
    Downsample,
    Upsample,
    attn_block,
    checked_time_embedding,
    conv3x3,
    group_norm,
    resnet_block,
)

Dtype = Any


class UNet(nn.Module):
    """DDPM U-Net (Ho et al. 2020) conditioned on ``noise_cond = log sigma``.

    Attributes:
      ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
      ch_mult: width multipliers, one per resolution (H, H/2, ...).
      num_res_blocks: ResNet blocks per resolution on the way down (one more on the way up).
      attn_resolutions: spatial sizes at which a self-attention block follows each block.
      dropout: dropout rate inside the ResNet blocks (active only with ``train=True``).
      num_groups: GroupNorm groups, clipped to a divisor of the channel count.
      embedding: ``'sinusoidal'`` (of ``embedding_scale * noise_cond``) or ``'fourier'``
        (Gaussian Fourier features of scale ``fourier_scale``, Song et al. 2021).
      resamp_with_conv: use convolutions in Down/Upsample.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      remat: rematerialize each ResNet and attention block (``jax.checkpoint``): less
        activation memory, about one more forward pass of compute; same values and params.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    embedding: str = "sinusoidal"
    embedding_scale: float = 250.0
    fourier_scale: float = 16.0
    resamp_with_conv: bool = True
    dtype: Dtype = jnp.float32
    remat: bool = False
    # Zero output at init (Ho et al.). Energies E = ||F||^2 / 2 need False: F = 0 with a
    # zero last layer is a stationary point of the conservative loss (all gradients vanish).
    zero_init_output: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond: jax.Array, train: bool = False) -> jax.Array:
        """Maps (B, H, W, C) images and (B,) noise levels to a (B, H, W, C) array."""
        temb = checked_time_embedding(self, x, noise_cond)
        hs = self._down(conv3x3(self.ch, self.dtype)(x), temb, train)
        h = self._res(hs[-1], None, temb, train)
        h = attn_block(self.remat, self.num_groups, self.dtype)(h)
        h = self._res(h, None, temb, train)
        h = self._up(h, hs, temb, train)
        h = nn.swish(group_norm(h, self.num_groups, self.dtype))
        return conv3x3(x.shape[-1], self.dtype, zero=self.zero_init_output)(h).astype(x.dtype)

    def _res(self, h, out_ch, temb, train):
        """One time-conditioned ResNet block."""
        block = resnet_block(self.remat, out_ch, self.dropout, self.num_groups, self.dtype)
        return block(h, temb, train)

    def _block(self, h, out_ch, temb, train):
        """ResNet block, followed by attention when the resolution is in attn_resolutions."""
        h = self._res(h, out_ch, temb, train)
        if h.shape[1] in self.attn_resolutions:
            h = attn_block(self.remat, self.num_groups, self.dtype)(h)
        return h

    def _down(self, h, temb, train):
        """Downsampling path; returns every intermediate activation for the skips."""
        hs = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                hs.append(self._block(hs[-1], self.ch * mult, temb, train))
            if level != len(self.ch_mult) - 1:
                hs.append(Downsample(self.resamp_with_conv, self.dtype)(hs[-1]))
        return hs

    def _up(self, h, hs, temb, train):
        """Upsampling path, consuming the skip activations of ``_down`` in reverse."""
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = self._block(h, self.ch * self.ch_mult[level], temb, train)
            if level != 0:
                h = Upsample(self.resamp_with_conv, self.dtype)(h)
        return h
