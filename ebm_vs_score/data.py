"""Data: 2-D toys with exact densities, scikit-learn digits, and TFDS image pipelines.

Infrastructure module. The toys and `GaussianMixture` need only numpy/JAX; TensorFlow and
TFDS are imported lazily inside the TFDS functions (and then hidden from the GPU), so
importing this module for toys or digits does not import TensorFlow.

Conventions
-----------
* Every example lives in a roughly unit-variance space. Images are scaled to [-1, 1].
* Toys (float32, shape (n, 2); `gmm` is (n, toy_dim)) are scaled isotropically so that the
  mean per-coordinate variance, tr(Cov) / D, is ~1 and the mean is ~0 (shape preserved):
    - `checkerboard`: FFJORD's 4x4 board on [-2, 2]^2 times sqrt(3)/2, i.e. on
      [-sqrt(3), sqrt(3)]^2 with squares of side sqrt(3)/2; each coordinate is U(-sqrt3,
      sqrt3), variance exactly 1. Exact density: 1/6 on the 8 occupied squares, 0 elsewhere.
    - `8gaussians`: 8 equal-weight isotropic Gaussians at angles k*pi/4 on a circle of
      radius 8/sqrt(33), std 1/sqrt(33) (FFJORD's radius/std ratio 8); variance exactly 1.
    - `spiral`: the swiss roll t*(cos t, sin t), t ~ U(1.5pi, 4.5pi), plus N(0, 1) noise
      (sklearn / FFJORD), centred by its exact mean (2, 2/(3pi)) and divided by 6.86.
    - `moons`: two half circles (sklearn `make_moons`, angles ~ U(0, pi), noise std 0.1),
      centred by the exact mean (0.5, 0.25) and divided by 0.712 (per-axis variances then
      ~1.50 and ~0.50).
    - `gmm`: the fixed, well-separated mixture built by `gmm(dim, num_components)`.
* Digits (sklearn, 1797 8x8 images with 17 intensity levels v in {0..16}): v -> v/16*2-1;
  with dequantization (v + u)/17*2-1, u ~ U[0, 1). Split by index, identical for every run:
  the first 1500 images are `train`, the last 297 `test` (classes balanced to +-3).
* TFDS images (256 levels p in {0..255}): p -> p/255*2-1; with dequantization
  (p + u)/256*2-1, the convention of Song et al. 2021 for bits/dim. `num_levels(config)`
  gives 17 or 256 for the NLL code.

`data_config` fields (an `ml_collections.ConfigDict` or any object with attributes):
  dataset:        a toy name, `digits`, or any TFDS image dataset name (`mnist`,
                  `fashion_mnist`, `cifar10`, `celeb_a`, `svhn_cropped`, ...).
  image_size:     side of the square images (TFDS only; images are centre-cropped to a
                  square, celeb_a to 140x140 as in score_sde, then resized if needed).
  num_channels:   channels of the images (TFDS only; checked against the data).
  data_dir:       TFDS data directory; None = TFDS default (~/tensorflow_datasets).
  random_flip:    random horizontal flips of training images (keep False for digits).
  dequantize:     uniform dequantization (see above); applies to digits and TFDS batches.
  toy_dim:        dimension of the `gmm` toy (default 2); the other toys are 2-D.
  num_components: number of components of the `gmm` toy (default 8).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ebm_vs_score.errors import DataError

TOY_NAMES = ("checkerboard", "8gaussians", "spiral", "moons", "gmm")
DIGITS_NUM_TRAIN = 1500  # first 1500 sklearn digits; the last 297 are the test split
TFDS_SHUFFLE_BUFFER = 50_000  # encoded examples: all of cifar10 / mnist, ~0.5 GB of celeb_a
_EVAL_SEED = 20_240_917  # fixed seed of the toy evaluation samples
_SPLIT_IDS = {"train": 0, "test": 1}


# ----------------------------------------------------------------------------------------
# Gaussian mixtures (pure JAX; exact densities and scores, also after Gaussian noising)
# ----------------------------------------------------------------------------------------


def _component_terms(x, log_weights, means, stds):
    """Per-component log(w_k N(x; m_k, s_k^2 I)), x - m_k and s_k^2.

    x is (..., D); means (K, D) or (B, K, D) and stds (K,) or (B, K) with x (B, D).
    """
    d = x.shape[-1]
    diff = x[..., None, :] - means  # (..., K, D)
    var = stds**2
    log_norm = -0.5 * d * jnp.log(2 * jnp.pi * var)
    return log_weights + log_norm - 0.5 * jnp.sum(diff**2, -1) / var, diff, var


def _mixture_log_prob(x, log_weights, means, stds):
    terms, _, _ = _component_terms(x, log_weights, means, stds)
    return jax.nn.logsumexp(terms, axis=-1)


def _mixture_score(x, log_weights, means, stds):
    """Closed form grad log p = sum_k r_k(x) (m_k - x) / s_k^2 (r: responsibilities)."""
    terms, diff, var = _component_terms(x, log_weights, means, stds)
    resp = jax.nn.softmax(terms, axis=-1)
    return -jnp.sum((resp / var)[..., None] * diff, axis=-2)


class GaussianMixture(NamedTuple):
    """Mixture of isotropic Gaussians sum_k w_k N(m_k, s_k^2 I) in D dimensions.

    A pytree of jnp arrays (pass it through `jax.jit` freely); all methods are pure JAX.
    Noising x_t = alpha x_0 + sigma eps of a mixture is again a mixture, with means
    alpha m_k and variances alpha^2 s_k^2 + sigma^2: this gives the exact noisy scores
    that samplers and losses are tested against.

    Attributes:
      weights: (K,) mixture weights, summing to 1.
      means: (K, D) component means.
      stds: (K,) per-component isotropic standard deviations.
    """

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log-density of x (..., D) -> (...)."""
        return _mixture_log_prob(x, jnp.log(self.weights), self.means, self.stds)

    def score(self, x: jax.Array) -> jax.Array:
        """Exact grad_x log p(x), x (..., D) -> (..., D)."""
        return _mixture_score(x, jnp.log(self.weights), self.means, self.stds)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n samples, (n, D)."""
        k_comp, k_eps = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.log(self.weights), shape=(n,))
        eps = jax.random.normal(k_eps, (n, self.dim), self.means.dtype)
        return self.means[comp] + self.stds[comp, None] * eps

    def mean(self) -> jax.Array:
        """Mixture mean, (D,)."""
        return self.weights @ self.means

    def covariance(self) -> jax.Array:
        """Mixture covariance sum_k w_k (s_k^2 I + m_k m_k^T) - m m^T, (D, D)."""
        second = jnp.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        second += jnp.sum(self.weights * self.stds**2) * jnp.eye(self.dim)
        m = self.mean()
        return second - jnp.outer(m, m)

    def noisy(self, alpha: float | jax.Array, sigma: float | jax.Array) -> GaussianMixture:
        """Law of x_t = alpha x_0 + sigma eps for scalar alpha, sigma (a mixture again)."""
        alpha, sigma = jnp.asarray(alpha), jnp.asarray(sigma)
        chex.assert_rank([alpha, sigma], 0)
        stds = jnp.sqrt(alpha**2 * self.stds**2 + sigma**2)
        return GaussianMixture(self.weights, alpha * self.means, stds)

    def _noisy_params(self, x, alpha, sigma):
        """Per-example noised means (B, K, D) and stds (B, K) for x (B, D)."""
        chex.assert_rank(x, 2)
        chex.assert_axis_dimension(x, 1, self.dim)
        b = x.shape[0]
        alpha, sigma = (jnp.broadcast_to(v, (b,)) if jnp.ndim(v) == 0 else jnp.asarray(v)
                        for v in (alpha, sigma))
        chex.assert_shape([alpha, sigma], (b,))
        means = alpha[:, None, None] * self.means
        stds = jnp.sqrt(alpha[:, None] ** 2 * self.stds**2 + sigma[:, None] ** 2)
        return means, stds

    def noisy_log_prob(self, x: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
        """log p_t(x) of x_t = alpha x_0 + sigma eps; x (B, D), alpha/sigma scalar or (B,)."""
        means, stds = self._noisy_params(x, alpha, sigma)
        return _mixture_log_prob(x, jnp.log(self.weights), means, stds)

    def noisy_score(self, x: jax.Array, alpha: Any, sigma: Any) -> jax.Array:
        """Exact grad_x log p_t(x); x (B, D), alpha/sigma scalar or (B,) -> (B, D)."""
        means, stds = self._noisy_params(x, alpha, sigma)
        return _mixture_score(x, jnp.log(self.weights), means, stds)


_EIGHT_RADIUS = 8 / math.sqrt(33)  # radius^2/2 + std^2 = 1: unit variance per coordinate
_EIGHT_STD = 1 / math.sqrt(33)


@functools.cache
def eight_gaussians() -> GaussianMixture:
    """The `8gaussians` toy: 8 equal Gaussians on a circle, unit variance per coordinate."""
    angles = jnp.arange(8) * (jnp.pi / 4)
    means = _EIGHT_RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    return GaussianMixture(jnp.full((8,), 1 / 8), means, jnp.full((8,), _EIGHT_STD))


@functools.cache
def gmm(dim: int = 2, num_components: int = 8, seed: int = 0) -> GaussianMixture:
    """A fixed, well-separated mixture in `dim` dimensions (the `gmm` toy).

    Means are drawn uniformly in [-sqrt3, sqrt3]^dim by rejection so that any two are at
    least 0.75 apart, i.e. >= 5 component stds, with stds in [0.12, 0.15] and weights in
    proportion to U(0.5, 1.5) (neither uniform). Then means are centred and means and stds
    scaled by one common factor so that the mixture has zero mean and tr(Cov)/dim = 1
    exactly (separation in stds unchanged). Deterministic given its arguments.
    """
    rng = np.random.default_rng([seed, dim, num_components])
    half, min_dist = math.sqrt(3.0), 0.75
    means: list[np.ndarray] = []
    for _ in range(100_000):
        cand = rng.uniform(-half, half, size=dim)
        if all(np.linalg.norm(cand - m) >= min_dist for m in means):
            means.append(cand)
            if len(means) == num_components:
                break
    else:
        raise ValueError(f"gmm: cannot place {num_components} components {min_dist} apart in "
                         f"{dim} dimensions; use fewer components (data.num_components).")
    weights = rng.uniform(0.5, 1.5, size=num_components)
    weights /= weights.sum()
    stds = rng.uniform(0.12, 0.15, size=num_components)
    centred = np.stack(means) - weights @ np.stack(means)
    # Zero mean and tr(Cov)/D = 1 exactly; a common scale keeps the separation in stds.
    scale = 1 / math.sqrt(weights @ (np.sum(centred**2, axis=1) / dim + stds**2))
    return GaussianMixture(jnp.asarray(weights, jnp.float32),
                           jnp.asarray(scale * centred, jnp.float32),
                           jnp.asarray(scale * stds, jnp.float32))


# ----------------------------------------------------------------------------------------
# 2-D toys (numpy samplers, deterministic given the seed)
# ----------------------------------------------------------------------------------------

_CHECKER_SIDE = math.sqrt(3.0) / 2  # board [-2c, 2c]^2, each coordinate ~ U(-sqrt3, sqrt3)
_SPIRAL_CENTER = np.array([2.0, 2.0 / (3 * np.pi)])
_SPIRAL_SCALE = 6.86
_MOONS_CENTER = np.array([0.5, 0.25])
_MOONS_SCALE = 0.712


def _as_generator(key_or_seed: Any) -> np.random.Generator:
    """numpy Generator from a Generator, an int / sequence of ints, or a JAX PRNG key."""
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed
    if isinstance(key_or_seed, jax.Array):
        if jnp.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
            key_or_seed = jax.random.key_data(key_or_seed)
        return np.random.default_rng(np.asarray(key_or_seed, np.uint32).ravel().tolist())
    return np.random.default_rng(key_or_seed)


def _sample_checkerboard(rng, n):
    col = rng.integers(0, 4, size=n)
    row = 2 * rng.integers(0, 2, size=n) + col % 2  # occupied squares: row + col even
    cells = np.stack([col, row], axis=1) + rng.uniform(size=(n, 2)) - 2.0
    return _CHECKER_SIDE * cells


def _sample_spiral(rng, n):
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    roll = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return (roll - _SPIRAL_CENTER) / _SPIRAL_SCALE


def _sample_moons(rng, n):
    angle, upper = np.pi * rng.uniform(size=n), rng.uniform(size=n) < 0.5
    outer = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    inner = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    moons = np.where(upper[:, None], outer, inner) + 0.1 * rng.standard_normal((n, 2))
    return (moons - _MOONS_CENTER) / _MOONS_SCALE


def _sample_mixture_np(mixture: GaussianMixture, rng, n):
    weights = np.asarray(mixture.weights, np.float64)
    comp = rng.choice(len(weights), size=n, p=weights / weights.sum())
    means, stds = np.asarray(mixture.means), np.asarray(mixture.stds)
    return means[comp] + stds[comp, None] * rng.standard_normal((n, means.shape[1]))


def toy_mixture(name: str, *, dim: int = 2, num_components: int = 8) -> GaussianMixture:
    """The `GaussianMixture` behind a mixture toy (`8gaussians` or `gmm`)."""
    mixtures = {"8gaussians": eight_gaussians,
                "gmm": lambda: gmm(dim=dim, num_components=num_components)}
    if name not in mixtures:
        raise ValueError(f"toy {name!r} is not a Gaussian mixture; mixtures: {list(mixtures)}.")
    return mixtures[name]()


def sample_toy(name: str, key_or_seed: Any, n: int, *, dim: int = 2,
               num_components: int = 8) -> np.ndarray:
    """n samples of a toy distribution, float32 (n, 2) ((n, dim) for `gmm`).

    Args:
      name: one of `TOY_NAMES`.
      key_or_seed: an int / sequence of ints seed, a `np.random.Generator`, or a JAX key.
      n: number of samples.
      dim, num_components: the `gmm` toy's dimension and number of components.
    """
    samplers: dict[str, Callable] = {
        "checkerboard": _sample_checkerboard,
        "8gaussians": lambda rng, n: _sample_mixture_np(eight_gaussians(), rng, n),
        "spiral": _sample_spiral,
        "moons": _sample_moons,
        "gmm": lambda rng, n: _sample_mixture_np(
            gmm(dim=dim, num_components=num_components), rng, n),
    }
    if name not in samplers:
        raise ValueError(f"Unknown toy {name!r}; valid toys: {list(samplers)}.")
    return samplers[name](_as_generator(key_or_seed), n).astype(np.float32)


def _checkerboard_log_prob(x: jax.Array) -> jax.Array:
    """Exact log-density of `checkerboard`: log(1/6) on occupied squares, -inf elsewhere."""
    cell = jnp.floor(x / _CHECKER_SIDE + 2.0)  # (..., 2) in {0..3} inside the board
    inside = jnp.all((cell >= 0) & (cell <= 3), axis=-1)
    occupied = jnp.sum(cell, axis=-1) % 2 == 0
    log_density = -jnp.log(8 * _CHECKER_SIDE**2)
    return jnp.where(inside & occupied, log_density, -jnp.inf)


def toy_log_prob(name: str, *, dim: int = 2,
                 num_components: int = 8) -> Callable[[jax.Array], jax.Array]:
    """Exact log-density x (..., D) -> (...) of a toy with a closed-form density.

    Available for `gmm`, `8gaussians` and `checkerboard` (piecewise constant, -inf off the
    board); `spiral` and `moons` have no closed form and raise ValueError.
    """
    if name == "checkerboard":
        return _checkerboard_log_prob
    if name in ("8gaussians", "gmm"):
        return toy_mixture(name, dim=dim, num_components=num_components).log_prob
    if name in TOY_NAMES:
        raise ValueError(f"toy {name!r} has no closed-form density; exact densities exist "
                         "for: checkerboard, 8gaussians, gmm.")
    raise ValueError(f"Unknown toy {name!r}; valid toys: {list(TOY_NAMES)}.")


# ----------------------------------------------------------------------------------------
# scikit-learn digits
# ----------------------------------------------------------------------------------------

DIGITS_LEVELS = 17


@functools.cache
def _digits_levels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw digits levels uint8 (N, 8, 8, 1) in {0..16} and labels int32 (N,), read-only."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"Unknown digits split {split!r}; valid splits: {list(_SPLIT_IDS)}.")
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    part = slice(None, DIGITS_NUM_TRAIN) if split == "train" else slice(DIGITS_NUM_TRAIN, None)
    levels = digits.images[part, :, :, None].astype(np.uint8)
    labels = digits.target[part].astype(np.int32)
    levels.flags.writeable = labels.flags.writeable = False
    return levels, labels


def _scale_levels(levels: np.ndarray, num_levels: int, noise: np.ndarray | None) -> np.ndarray:
    """Integer levels -> [-1, 1]: v/(L-1) without noise, (v + u)/L with u ~ U[0, 1)."""
    if noise is None:
        unit = levels / (num_levels - 1)
    else:
        unit = (levels + noise) / num_levels
    return (2 * unit - 1).astype(np.float32)


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits: images float32 (N, 8, 8, 1) in [-1, 1] and labels int32 (N,).

    `train` is the first 1500 images and `test` the last 297, for every run.
    """
    levels, labels = _digits_levels(split)
    return _scale_levels(levels, DIGITS_LEVELS, None), labels.copy()


# ----------------------------------------------------------------------------------------
# TFDS image pipelines (TensorFlow imported lazily, input pipeline only)
# ----------------------------------------------------------------------------------------

_CENTER_CROP = {"celeb_a": 140}  # score_sde's CelebA crop before resizing


def _import_tf():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        tf.config.set_visible_devices([], "GPU")  # TF is the input pipeline only
    except RuntimeError:  # TF devices already initialised by the caller
        pass
    return tf, tfds


def _unknown_dataset_error(name: str) -> ValueError:
    return ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(TOY_NAMES)}, digits, "
                      "or any TFDS image dataset name (mnist, fashion_mnist, cifar10, celeb_a, "
                      "svhn_cropped, ...).")


def _missing_dataset_error(name: str, data_dir: str) -> FileNotFoundError:
    return DataError(  # a FileNotFoundError that main reports in one sentence
        f"TFDS dataset {name!r} is not prepared in data_dir {data_dir!r}: on a machine with "
        f"internet run `python -c \"import tensorflow_datasets as tfds; tfds.builder("
        f"'{name}', data_dir='DIR').download_and_prepare()\"`, copy DIR here if needed, and "
        "pass --config.data.data_dir=DIR.")


def _tfds_builder(tfds, name: str, data_dir: str | None):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise _unknown_dataset_error(name) from None
    if "image" not in builder.info.features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' feature; only image datasets "
                         "are supported.")
    return builder


def _crop_resize(tf, image, image_size: int, crop: int | None):
    """Centre-crop to a square (side `crop`, else the short side), resize, keep 256 levels."""
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1]) if crop is None else crop
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    image = image[top:top + side, left:left + side]
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _make_preprocess(tf, image_feature, *, name, image_size, random_flip, dequantize, seed):
    """(global example index, encoded example) -> {'image': [-1, 1] float32, 'label'}."""
    static = tuple(image_feature.shape[:2])
    if image_size is None and None in static:
        raise ValueError(f"TFDS dataset {name!r} has images of varying size {static}; set "
                         "data.image_size to crop and resize them to a square.")
    resize = image_size is not None and static != (image_size, image_size)

    def preprocess(index, example):
        image = image_feature.decode_example(example["image"])
        image = tf.cast(image, tf.float32)
        if resize:
            image = _crop_resize(tf, image, image_size, _CENTER_CROP.get(name))
        flip_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), index]), 2))
        if random_flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if dequantize:
            noise = tf.random.stateless_uniform(tf.shape(image), noise_seed)
            image = (image + noise) / 256.0
        else:
            image = image / 255.0
        label = tf.cast(example.get("label", tf.constant(-1, tf.int64)), tf.int32)
        return {"image": 2.0 * image - 1.0, "label": label}

    return preprocess


def _read_split(tf, tfds, builder, name, split, process_index, process_count):
    """This process's disjoint part of `split`, encoded, in a fixed order; and its size."""
    subsplit = tfds.split_for_jax_process(split, process_index=process_index,
                                          process_count=process_count)
    options = tf.data.Options()
    options.deterministic = True
    try:
        ds = builder.as_dataset(split=subsplit, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()},
                                read_config=tfds.ReadConfig(options=options))
    except AssertionError:  # TFDS's "could not find data in ..." for unprepared datasets
        raise _missing_dataset_error(name, str(builder.data_dir_root)) from None
    keys = [k for k in ("image", "label") if k in builder.info.features]
    ds = ds.map(lambda ex: {k: ex[k] for k in keys})
    size = int(ds.cardinality())
    if size < 0:  # unknown cardinality: count once
        size = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
    if size == 0:
        raise ValueError(f"TFDS split {subsplit!r} of {name!r} is empty.")
    return ds, size


def tfds_image_dataset(name: str, split: str, *, batch_size: int,
                       image_size: int | None = None, data_dir: str | None = None,
                       shuffle: bool = False, repeat: bool = False, random_flip: bool = False,
                       dequantize: bool = False, seed: int = 0, process_index: int = 0,
                       process_count: int = 1, start_step: int = 0,
                       drop_remainder: bool | None = None,
                       shuffle_buffer: int = TFDS_SHUFFLE_BUFFER):
    """A tf.data pipeline of {'image': float32 (b, H, W, C) in [-1, 1], 'label': int32 (b,)}.

    Process `process_index` of `process_count` reads its own disjoint part of `split`
    (`tfds.split_for_jax_process`, parts of near-equal size that together cover the split).
    Epoch e of that part is shuffled with a buffer of `shuffle_buffer` and a seed derived
    from (seed, process_index, e); flips and dequantization noise are stateless functions of
    (seed, process_index, position in the stream). Hence the stream is a deterministic
    function of the arguments (and the TFDS/TF versions), and `start_step` resumes it
    exactly: it starts at epoch start_step*batch_size // epoch_size and skips that many
    leading examples of it (at most one epoch is read, still encoded, to resume). The
    shuffle buffer holds encoded images and covers all of cifar10 / mnist by default; for
    larger datasets the file order is only shuffled within the buffer.

    Args:
      name: TFDS name of a dataset with an 'image' feature (label -1 if it has no 'label').
      split: TFDS split string, e.g. 'train', 'test', 'train[:90%]'.
      batch_size: the batch size of THIS process.
      image_size: square output side; images of another size are centre-cropped to a
        square (celeb_a: 140x140 as in score_sde) and resized. None keeps the native size.
      data_dir: TFDS data directory (None: TFDS default). Nothing is ever downloaded.
      shuffle, repeat, random_flip, dequantize: as named; dequantization is
        (p + U[0, 1)) / 256, otherwise p / 255, then mapped to [-1, 1].
      seed: seed of shuffling, flips and dequantization noise.
      process_index, process_count: this process and the number of processes.
      start_step: number of batches of the stream to skip, exactly.
      drop_remainder: drop a final partial batch; default `repeat`.
      shuffle_buffer: shuffle buffer size (examples).

    Raises:
      FileNotFoundError: the dataset is not prepared in `data_dir` (says how to fix it).
      ValueError: unknown dataset name or no 'image' feature.
    """
    tf, tfds = _import_tf()
    _check_process(process_index, process_count)
    builder = _tfds_builder(tfds, name, data_dir)
    base, size = _read_split(tf, tfds, builder, name, split, process_index, process_count)
    stream_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0] >> 1)
    first = start_step * batch_size
    start_epoch, skip = divmod(first, size)

    def one_epoch(epoch):
        if not shuffle:
            return base
        epoch_seed = tf.constant(stream_seed, tf.int64) * 2**31 + epoch
        return base.shuffle(min(shuffle_buffer, size), seed=epoch_seed,
                            reshuffle_each_iteration=False)

    epochs = (tf.data.Dataset.counter(start_epoch) if repeat
              else tf.data.Dataset.range(start_epoch, 1))
    ds = epochs.flat_map(one_epoch).skip(skip).enumerate(start=first)
    preprocess = _make_preprocess(tf, builder.info.features["image"], name=name,
                                  image_size=image_size, random_flip=random_flip,
                                  dequantize=dequantize, seed=stream_seed)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=repeat if drop_remainder is None else drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------------
# The entry point of the train loop
# ----------------------------------------------------------------------------------------


def _field(config, name: str, default: Any = None) -> Any:
    return getattr(config, name, default)


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count="
                         f"{process_count}).")


def _local_slice(x: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous part of a global batch (equal parts when divisible)."""
    return np.array_split(x, process_count)[process_index]


def _toy_batches(data_config, *, batch_size, split, seed, start_step):
    """Global toy batch of step s from rng (seed, split, s): infinite, for every split."""
    split_id = _split_id(data_config, split)
    kwargs = {"dim": _field(data_config, "toy_dim", 2),
              "num_components": _field(data_config, "num_components", 8)}
    step = start_step
    while True:
        rng = np.random.default_rng([seed, split_id, step])
        yield sample_toy(data_config.dataset, rng, batch_size, **kwargs)
        step += 1


def _digits_batch_indices(step: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """Indices of a training batch: the stream is epoch e = permutation(rng(seed, e))."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    epoch = pos // size
    idx = np.empty_like(pos)
    for e in np.unique(epoch):
        perm = np.random.default_rng([seed, int(e)]).permutation(size)
        idx[epoch == e] = perm[pos[epoch == e] % size]
    return idx


def _digits_batches(data_config, *, batch_size, split, seed, start_step):
    """Digits global batches: shuffled epochs (train) or one ordered pass (other splits)."""
    levels, _ = _digits_levels(split)
    train, size = split == "train", len(levels)
    step = start_step
    while train or step * batch_size < size:
        idx = (_digits_batch_indices(step, batch_size, size, seed) if train
               else np.arange(step * batch_size, min((step + 1) * batch_size, size)))
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], step, 1])
        batch = levels[idx]
        if train and _field(data_config, "random_flip", False):
            flip = rng.uniform(size=len(idx)) < 0.5
            batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
        noise = rng.uniform(size=batch.shape) if _field(data_config, "dequantize") else None
        yield _scale_levels(batch, DIGITS_LEVELS, noise)
        step += 1


def _split_id(data_config, split: str) -> int:
    if split not in _SPLIT_IDS:
        raise ValueError(f"Unknown split {split!r} for {data_config.dataset!r}; valid splits: "
                         f"{list(_SPLIT_IDS)}.")
    return _SPLIT_IDS[split]


def _tfds_batches(data_config, *, batch_size, split, seed, start_step, process_index,
                  process_count):
    """Local TFDS batches as numpy, after checking the image shape against the config."""
    train = split == "train"
    ds = tfds_image_dataset(
        data_config.dataset, split, batch_size=batch_size // process_count,
        image_size=_field(data_config, "image_size"), data_dir=_field(data_config, "data_dir"),
        shuffle=train, repeat=train,
        random_flip=train and bool(_field(data_config, "random_flip", False)),
        dequantize=bool(_field(data_config, "dequantize", False)), seed=seed,
        process_index=process_index, process_count=process_count, start_step=start_step)
    got, want = tuple(ds.element_spec["image"].shape[1:]), data_shape(data_config)
    if got != want:
        raise ValueError(f"{data_config.dataset!r} images have shape {got} but the config says "
                         f"{want}; set data.image_size and data.num_channels to match.")
    return ({"x": batch["image"]} for batch in ds.as_numpy_iterator())


def get_dataset(data_config, *, batch_size: int, split: str, seed: int,
                process_index: int = 0, process_count: int = 1,
                start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Iterator of this process's batches {'x': float32 (batch_size // process_count, ...)}.

    Args:
      data_config: the `config.data` fields described in the module docstring.
      batch_size: the GLOBAL batch size; it must be divisible by `process_count`.
      split: 'train' (infinite, shuffled/resampled, flips per config) or 'test' (toys:
        infinite fresh samples; digits/TFDS: one ordered pass, last batch may be smaller
        and is then split as evenly as possible); TFDS accepts any TFDS split string.
      seed: data seed; the stream is a deterministic function of (config, seed, split).
      process_index, process_count: this process and the number of processes.
      start_step: index of the first batch; yields exactly the batches an uninterrupted
        run would yield from that step on.

    Toys and digits compute the global batch of step s from (seed, s) (cheap) and give
    each process its contiguous slice, so the processes' batches concatenate to the
    single-process batch. TFDS processes read disjoint parts of the split, each shuffled
    on its own (see `tfds_image_dataset`); their union is not the single-process batch.

    Raises:
      ValueError: unknown dataset or split, indivisible batch size, shape mismatch.
      FileNotFoundError: a TFDS dataset is not prepared in data.data_dir.
    """
    if batch_size % process_count:
        raise ValueError(f"Global batch_size={batch_size} is not divisible by process_count="
                         f"{process_count}; set training.batch_size to a multiple of it.")
    _check_process(process_index, process_count)
    name = data_config.dataset
    global_batches = {**dict.fromkeys(TOY_NAMES, _toy_batches), "digits": _digits_batches}
    if name not in global_batches:  # any other name is looked up in TFDS
        return _tfds_batches(data_config, batch_size=batch_size, split=split, seed=seed,
                             start_step=start_step, process_index=process_index,
                             process_count=process_count)
    data_shape(data_config)  # validates toy_dim
    _split_id(data_config, split)
    batches = global_batches[name](data_config, batch_size=batch_size, split=split, seed=seed,
                                   start_step=start_step)
    return ({"x": _local_slice(x, process_index, process_count)} for x in batches)


def data_shape(data_config) -> tuple[int, ...]:
    """Per-example shape, e.g. (2,), (8, 8, 1), (32, 32, 3), without loading any data."""
    name = data_config.dataset
    if name in TOY_NAMES:
        dim = _field(data_config, "toy_dim", 2)
        if name != "gmm" and dim != 2:
            raise ValueError(f"toy {name!r} is 2-D but data.toy_dim={dim}; only gmm takes "
                             "another dimension.")
        return (dim,)
    if name == "digits":
        return (8, 8, 1)
    image_size, channels = _field(data_config, "image_size"), _field(data_config, "num_channels")
    if image_size is None or channels is None:
        raise ValueError(f"TFDS dataset {name!r} needs data.image_size and data.num_channels.")
    return (image_size, image_size, channels)


def num_levels(data_config) -> int | None:
    """Number of intensity levels of the raw data (dequantization / bits per dim), or None."""
    name = data_config.dataset
    return None if name in TOY_NAMES else DIGITS_LEVELS if name == "digits" else 256


def eval_data(data_config, split: str, n: int | None = None) -> np.ndarray:
    """Whole evaluation arrays (not per process, never dequantized or flipped).

    Toys: n (default 10000) fresh samples from a fixed seed per split. Digits and TFDS:
    the first n (default all) examples of `split` in [-1, 1], in a fixed order.
    """
    name = data_config.dataset
    if name in TOY_NAMES:
        rng = np.random.default_rng([_EVAL_SEED, _split_id(data_config, split)])
        return sample_toy(name, rng, 10_000 if n is None else n,
                          dim=_field(data_config, "toy_dim", 2),
                          num_components=_field(data_config, "num_components", 8))
    if name == "digits":
        return load_digits_split(split)[0][:n]
    ds = tfds_image_dataset(name, split if n is None else f"{split}[:{n}]", batch_size=1024,
                            image_size=_field(data_config, "image_size"),
                            data_dir=_field(data_config, "data_dir"))
    return np.concatenate([b["image"] for b in ds.as_numpy_iterator()])[:n]
