"""Building blocks shared by the U-Net, the ResNet energy and the MLP.

Every layer acts on each example separately (GroupNorm, never batch normalization), so that an
energy's score can be taken as ``-grad`` of the batch sum (DESIGN.md, rule 2). Layers
compute in ``dtype`` and keep float32 parameters (mixed precision); normalization
statistics and softmax run in float32.

References:
  Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (ResNet/attention
  blocks, resampling); Song et al. 2021, "Score-Based Generative Modeling through SDEs"
  (Gaussian Fourier features); Vaswani et al. 2017 (sinusoidal embedding); Wu & He 2018
  (GroupNorm); Ramachandran et al. 2017 / Elfwing et al. 2018 (swish = SiLU).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_vs_score.models.channelwise import Conv, Dense, GroupNorm, broadcast_channels

Dtype = Any

default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zeros_init = nn.initializers.zeros
EMBEDDINGS = ("sinusoidal", "fourier")


def group_count(channels: int, num_groups: int) -> int:
    """Largest divisor of ``channels`` that is at most ``num_groups`` (so tiny widths work)."""
    if channels < 1 or num_groups < 1:
        raise ValueError(f"channels ({channels}) and num_groups ({num_groups}) must be >= 1.")
    return max(g for g in range(1, min(channels, num_groups) + 1) if channels % g == 0)


def group_norm(x: jax.Array, num_groups: int, dtype: Dtype) -> jax.Array:
    """GroupNorm (Wu & He 2018) over the last axis, with the group count clipped; 0 groups:
    no normalization (Gao et al. 2021's energy network, ``normalize=None``)."""
    if num_groups == 0:
        return x
    groups = group_count(x.shape[-1], num_groups)
    return GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype)(x)


def conv3x3(features: int, dtype: Dtype, stride: int = 1, zero: bool = False) -> Conv:
    """3x3 'SAME' convolution; ``zero`` initializes the kernel to zero (Ho et al. 2020)."""
    return Conv(
        features,
        (3, 3),
        strides=(stride, stride),
        padding="SAME",
        dtype=dtype,
        kernel_init=zeros_init if zero else default_init,
    )


def check_noise_cond(noise_cond: jax.Array, batch: int) -> jax.Array:
    """Returns ``noise_cond`` as a float32 (B,) array; a scalar is broadcast to the batch."""
    noise_cond = jnp.asarray(noise_cond, jnp.float32)
    if noise_cond.ndim > 1 or (noise_cond.ndim == 1 and noise_cond.shape[0] != batch):
        raise ValueError(
            f"noise_cond must have shape ({batch},) (one value per example), "
            f"got {noise_cond.shape}."
        )
    return jnp.broadcast_to(noise_cond, (batch,))


def check_image(x: jax.Array, num_downsamples: int) -> None:
    """Raises ``ValueError`` unless ``x`` is (B, H, W, C) with H, W divisible by 2**n."""
    if x.ndim != 4:
        raise ValueError(f"Expected images of shape (B, H, W, C), got shape {x.shape}.")
    factor = 2**num_downsamples
    height, width = x.shape[1:3]
    if height % factor or width % factor:
        raise ValueError(
            f"Image size {height}x{width} is invalid for len(ch_mult)={num_downsamples + 1}: "
            f"height and width must be multiples of 2**(len(ch_mult)-1) = {factor} "
            f"(e.g. {factor}, {2 * factor}, {4 * factor}, ...). Change ch_mult or the image size."
        )


def sinusoidal_embedding(t: jax.Array, dim: int, max_positions: int = 10_000) -> jax.Array:
    """Transformer sinusoidal embedding of a (B,) array (Vaswani et al. 2017; Ho et al. 2020).

    Args:
      t: (B,) positions (here ``embedding_scale * log sigma``).
      dim: embedding size; an odd size is zero-padded.
      max_positions: the longest period is ``2 pi max_positions``.

    Returns:
      (B, dim) float32 array ``[sin(t w_k), cos(t w_k)]`` with geometric frequencies ``w_k``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) * jnp.arange(half) / max(half - 1, 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a (B,) array (Tancik et al. 2020; Song et al. 2021, NCSN++).

    The frequencies ``W ~ N(0, scale^2)`` are stored as a parameter but never trained
    (``stop_gradient``), as in score_sde. Output: (B, 2 * (dim // 2)) zero-padded to dim.
    """

    dim: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        init = lambda key, shape: self.scale * jax.random.normal(key, shape, jnp.float32)
        w = jax.lax.stop_gradient(self.param("W", init, (self.dim // 2,)))
        args = 2 * jnp.pi * t.astype(jnp.float32)[:, None] * w[None, :]
        emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
        return jnp.pad(emb, ((0, 0), (0, self.dim % 2)))


class TimeEmbedding(nn.Module):
    """Noise-level embedding: features of ``noise_cond`` followed by Dense-swish-Dense.

    Attributes:
      dim: size of the sinusoidal / Fourier features.
      out_dim: output size (``4 * ch`` in the U-Net of Ho et al. 2020).
      embedding: ``'sinusoidal'`` (of ``embedding_scale * noise_cond``) or ``'fourier'``
        (Gaussian Fourier features with frequency scale ``fourier_scale``, Song et al. 2021).
    """

    dim: int
    out_dim: int
    embedding: str = "sinusoidal"
    embedding_scale: float = 250.0
    fourier_scale: float = 16.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, noise_cond: jax.Array) -> jax.Array:
        if self.embedding == "sinusoidal":
            emb = sinusoidal_embedding(self.embedding_scale * noise_cond, self.dim)
        elif self.embedding == "fourier":
            emb = GaussianFourierEmbedding(self.dim, self.fourier_scale)(noise_cond)
        else:
            raise ValueError(f"Unknown embedding {self.embedding!r}; valid names: {EMBEDDINGS}.")
        emb = Dense(self.out_dim, dtype=self.dtype, kernel_init=default_init)(emb)
        return Dense(self.out_dim, dtype=self.dtype, kernel_init=default_init)(nn.swish(emb))


class ResnetBlock(nn.Module):
    """DDPM residual block (Ho et al. 2020, App. B; score_sde ``ResnetBlockDDPM``).

    ``GN-swish-conv``, plus ``Dense(swish(temb))`` broadcast over space, then
    ``GN-swish-dropout-conv`` (zero-initialized) and a 1x1 skip when channels change.
    """

    out_ch: int | None = None
    dropout: float = 0.1
    num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
        out_ch = self.out_ch or x.shape[-1]
        h = conv3x3(out_ch, self.dtype)(nn.swish(group_norm(x, self.num_groups, self.dtype)))
        proj = Dense(out_ch, dtype=self.dtype, kernel_init=default_init)(nn.swish(temb))
        h = h + broadcast_channels(proj, h.shape)
        h = nn.swish(group_norm(h, self.num_groups, self.dtype))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(out_ch, self.dtype, zero=True)(h)
        if x.shape[-1] != out_ch:
            x = Dense(out_ch, dtype=self.dtype, kernel_init=default_init, name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual (Ho et al. 2020; Wang et al. 2018).

    GroupNorm, 1x1 projections to q, k, v, softmax over the H*W positions of the same
    example (float32), zero-initialized output projection.
    """

    num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = group_norm(x, self.num_groups, self.dtype)
        dense = lambda name, init=default_init: Dense(
            channels, dtype=self.dtype, kernel_init=init, name=name
        )
        q, k, v = (dense(n)(h).reshape(batch, height * width, channels) for n in "qkv")
        logits = jnp.einsum("bic,bjc->bij", q, k) / math.sqrt(channels)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("bij,bjc->bic", weights, v).reshape(batch, height, width, channels)
        return x + dense("proj_out", zeros_init)(h)


class Downsample(nn.Module):
    """Halves H and W: stride-2 3x3 conv, or 2x2 average pooling (Ho et al. 2020)."""

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.with_conv:
            return conv3x3(x.shape[-1], self.dtype, stride=2)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Doubles H and W: nearest-neighbour repeat, then an optional 3x3 conv (Ho et al. 2020)."""

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if self.with_conv:
            x = conv3x3(x.shape[-1], self.dtype)(x)
        return x


def _remat(cls: type, static_argnums: tuple[int, ...]) -> type:
    """``nn.remat`` of ``cls`` that keeps its name, so parameter trees match the plain one.

    Policy: save nothing inside the block (``jax.checkpoint``'s default), recompute it in
    the backward pass; only the block inputs stay live. This is the standard choice for
    ResNet/attention blocks (Chen et al. 2016, "Training deep nets with sublinear memory
    cost"); it also composes with the second backward pass of the energy families.
    """
    lifted = nn.remat(cls, static_argnums=static_argnums)
    lifted.__name__ = lifted.__qualname__ = cls.__name__
    return lifted


# static_argnums count ``self`` as 0: ResnetBlock(x, temb, train) has ``train`` at 3.
_REMAT_RESNET = _remat(ResnetBlock, (3,))
_REMAT_ATTN = _remat(AttnBlock, ())


def resnet_block(remat: bool, *args, **kwargs) -> nn.Module:
    """A ``ResnetBlock``, rematerialized (``jax.checkpoint``) when ``remat`` is True."""
    return (_REMAT_RESNET if remat else ResnetBlock)(*args, **kwargs)


def attn_block(remat: bool, *args, **kwargs) -> nn.Module:
    """An ``AttnBlock``, rematerialized (``jax.checkpoint``) when ``remat`` is True."""
    return (_REMAT_ATTN if remat else AttnBlock)(*args, **kwargs)


def checked_time_embedding(net: nn.Module, x: jax.Array, noise_cond: jax.Array) -> jax.Array:
    """Checks ``x`` (B, H, W, C) and ``noise_cond`` (B,), then embeds ``noise_cond`` with the
    calling U-Net / ResNet energy's fields (``ch``, ``embedding*``, ``fourier_scale``,
    ``dtype``) as its submodule ``TimeEmbedding_0`` (Ho et al. 2020: width 4 ch)."""
    check_image(x, len(net.ch_mult) - 1)
    noise_cond = check_noise_cond(noise_cond, x.shape[0])
    return TimeEmbedding(net.ch, 4 * net.ch, net.embedding, net.embedding_scale,
                         net.fourier_scale, net.dtype)(noise_cond)
