"""Noise-conditioned MLP for 2-D toys and low-dimensional data.

Smooth activations only (swish or softplus): an energy's score is its input gradient and
Jacobian-based metrics (Asym, ISM) differentiate it once more. The noise-level embedding
is projected and added to every hidden layer, as the time embedding is added in the
ResNet blocks of Ho et al. 2020. ``out='vector'`` gives a score-like field with x's shape
(last layer zero-initialized); ``out='scalar'`` gives an energy of shape (B,) (Salimans &
Ho 2021).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_vs_score.models.layers import TimeEmbedding, check_noise_cond, default_init, zeros_init

Dtype = Any

ACTIVATIONS = {"swish": nn.swish, "silu": nn.swish, "softplus": nn.softplus}
OUTPUTS = ("vector", "scalar")


class MLP(nn.Module):
    """Noise-conditioned MLP ``(B, ...) x (B,) -> (B, ...)`` or ``-> (B,)``.

    Attributes:
      hidden: widths of the hidden layers.
      out: ``'vector'`` (output shaped like x) or ``'scalar'`` (output (B,)).
      activation: ``'swish'`` (= ``'silu'``, default) or ``'softplus'``.
      embedding: ``'sinusoidal'`` (of ``embedding_scale * noise_cond``) or ``'fourier'``
        (Gaussian Fourier features of scale ``fourier_scale``, Song et al. 2021).
      embedding_dim: size of the noise-level embedding.
      dropout: dropout rate after each hidden layer (active only with ``train=True``).
      dtype: compute dtype; parameters stay float32.
    """

    hidden: tuple[int, ...] = (128, 128, 128)
    out: str = "vector"
    activation: str = "swish"
    embedding: str = "sinusoidal"
    embedding_scale: float = 250.0
    fourier_scale: float = 16.0
    embedding_dim: int = 64
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    # See UNet.zero_init_output: conservative energies must not start with F = 0.
    zero_init_output: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond: jax.Array, train: bool = False) -> jax.Array:
        """Flattens each example, applies the MLP and reshapes (vector) or squeezes (scalar)."""
        if self.out not in OUTPUTS:
            raise ValueError(f"Unknown MLP output {self.out!r}; valid names: {OUTPUTS}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; valid names: {tuple(ACTIVATIONS)}."
            )
        act = ACTIVATIONS[self.activation]
        noise_cond = check_noise_cond(noise_cond, x.shape[0])
        temb = TimeEmbedding(
            self.embedding_dim,
            self.embedding_dim,
            self.embedding,
            self.embedding_scale,
            self.fourier_scale,
            self.dtype,
        )(noise_cond)
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = nn.Dense(width, dtype=self.dtype, kernel_init=default_init)(h)
            h = act(h + nn.Dense(width, dtype=self.dtype, kernel_init=default_init)(act(temb)))
            h = nn.Dropout(self.dropout)(h, deterministic=not train)
        if self.out == "scalar":
            return nn.Dense(1, dtype=jnp.float32, kernel_init=default_init)(h)[:, 0].astype(x.dtype)
        init = zeros_init if self.zero_init_output else default_init
        out = nn.Dense(math.prod(x.shape[1:]), dtype=self.dtype, kernel_init=init)(h)
        return out.reshape(x.shape).astype(x.dtype)
