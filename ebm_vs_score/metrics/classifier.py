"""Offline feature network for image metrics: a small deterministic CNN classifier.

FID-style distances need a feature space and the Inception score needs class logits. For
small image sets (sklearn digits, 8x8) the ImageNet Inception network is meaningless, so
the study uses, as the FID/IS *analogue*, a small CNN trained on the dataset's own training
split, in the spirit of the MNIST "LeNet FID" (e.g. Binkowski et al. 2018, "Demystifying
MMD GANs", Sec. 5). Numbers in this space are comparable between runs that share the
classifier (same data, seed and steps), never with published FIDs.

Network (`FeatureCNN`): three 3x3 convolutions (strides 1, 2, 2) each with GroupNorm and
swish, a global mean pool, a `feature_dim` dense layer with swish -- the *features* -- and a
dense layer to the class *logits*. GroupNorm is per example (no batch normalization), so features of
an example never depend on the rest of its batch. Works for any (N, H, W, C) images in
[-1, 1]. Training: AdamW with cosine decay, cross-entropy, minibatches drawn by
`np.random.default_rng(seed)`: deterministic given `seed` (on one backend).

Cache (`cache_dir`): `params.msgpack` (flax.serialization) and `meta.json` (fingerprint of
the training data and hyper-parameters, image shape, classes, accuracies). A cache whose
fingerprint matches is reused; otherwise the classifier is retrained and both files are
replaced atomically.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ebm_vs_score import data

DEFAULT_STEPS = 1000
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
WIDTHS = (16, 32, 64)
FEATURE_DIM = 64
_VERSION = 1  # bump when the network or training changes: invalidates caches
PARAMS_FILE, META_FILE = "params.msgpack", "meta.json"


class FeatureCNN(nn.Module):
    """Small conv net: images (B, H, W, C) in [-1, 1] -> (features (B, F), logits (B, K))."""

    num_classes: int
    widths: tuple[int, ...] = WIDTHS
    feature_dim: int = FEATURE_DIM

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for i, width in enumerate(self.widths):
            x = nn.Conv(width, (3, 3), strides=1 if i == 0 else 2)(x)
            x = nn.swish(nn.GroupNorm(num_groups=min(8, width))(x))
        x = jnp.mean(x, axis=(1, 2))
        features = nn.swish(nn.Dense(self.feature_dim, name="features")(x))
        return features, nn.Dense(self.num_classes, name="logits")(features)


class Classifier(NamedTuple):
    """A trained offline classifier.

    Attributes:
      params: the `FeatureCNN` parameters.
      apply: images (N, H, W, C) in [-1, 1] -> (features (N, F), logits (N, K)), numpy;
        `features_and_logits` with the params bound (takes an optional `batch_size`).
      accuracy: accuracy on the evaluation images if given, else on the training images.
      train_accuracy: accuracy on the training images.
      num_classes: number of classes K.
    """

    params: Any
    apply: Callable[..., tuple[np.ndarray, np.ndarray]]
    accuracy: float
    train_accuracy: float
    num_classes: int


def _num_classes(params: Any) -> int:
    return int(params["logits"]["kernel"].shape[-1])


@functools.partial(jax.jit, static_argnames="num_classes")
def _apply_batch(params: Any, images: jax.Array, num_classes: int):
    return FeatureCNN(num_classes).apply({"params": params}, images)


def features_and_logits(params: Any, images: Any,
                        batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) and logits (N, K) of images (N, H, W, C) in [-1, 1], as numpy.

    Runs in batches of exactly `batch_size` (the last one zero-padded), so every call with
    the same image shape reuses one compilation.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    k, n = _num_classes(params), images.shape[0]
    feats, logits = [], []
    for start in range(0, n, batch_size):
        batch = images[start:start + batch_size]
        valid = batch.shape[0]
        batch = np.pad(batch, ((0, batch_size - valid), (0, 0), (0, 0), (0, 0)))
        f, lg = _apply_batch(params, jnp.asarray(batch), k)
        feats.append(np.asarray(f)[:valid])
        logits.append(np.asarray(lg)[:valid])
    return np.concatenate(feats), np.concatenate(logits)


def accuracy(params: Any, images: Any, labels: Any) -> float:
    """Fraction of images whose argmax logit equals the label."""
    _, logits = features_and_logits(params, images)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def train_classifier(images: Any, labels: Any, *, num_classes: int, seed: int = 0,
                     steps: int = DEFAULT_STEPS) -> Any:
    """Trains a `FeatureCNN` by cross-entropy; returns its params (deterministic in seed).

    Init uses an `rbg` key (XLA:CPU compiles threefry initializers ~3x slower) and the
    minibatch indices come from `np.random.default_rng(seed)`, so the jitted step holds no
    RNG; a Python loop over that step (XLA:CPU runs convolution gradients inside a
    `lax.scan` about 10x slower). The result depends only on (data, seed, steps, backend).
    """
    x, y = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    model = FeatureCNN(num_classes)
    tx = optax.adamw(optax.cosine_decay_schedule(LEARNING_RATE, max(steps, 1)),
                     weight_decay=WEIGHT_DECAY)

    @jax.jit
    def init(xb):
        params = model.init(jax.random.key(seed, impl="rbg"), xb)["params"]
        return params, tx.init(params)

    def loss_fn(p, xb, yb):
        _, logits = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, xb, yb):
        p, opt_state = state
        updates, opt_state = tx.update(jax.grad(loss_fn)(p, xb, yb), opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    state = init(x[:1])
    for idx in np.random.default_rng(seed).integers(0, len(x), (steps, BATCH_SIZE)):
        state = step(state, x[idx], y[idx])
    return jax.device_get(state[0])


def _fingerprint(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                 steps: int) -> str:
    """sha256 of the training data and every setting that changes the trained params."""
    h = hashlib.sha256()
    settings = dict(version=_VERSION, shape=images.shape, classes=num_classes, seed=seed,
                    steps=steps, batch_size=BATCH_SIZE, lr=LEARNING_RATE, wd=WEIGHT_DECAY,
                    widths=WIDTHS, feature_dim=FEATURE_DIM)
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(np.ascontiguousarray(images, np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Writes a file through a temporary file and `os.replace`: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _load_cache(cache_dir: Path, fingerprint: str, template: Any) -> tuple[Any, dict] | None:
    """Cached (params, meta) if the fingerprint and the param shapes match, else None."""
    try:
        meta = json.loads((cache_dir / META_FILE).read_text())
        if meta.get("fingerprint") != fingerprint:
            return None
        params = flax.serialization.msgpack_restore((cache_dir / PARAMS_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    shapes = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    if shapes != jax.tree.map(lambda a: tuple(a.shape), template):
        return None
    return params, meta


def get_classifier(images: Any, labels: Any, cache_dir: str | os.PathLike | None,
                   seed: int = 0, steps: int = DEFAULT_STEPS, *, eval_images: Any = None,
                   eval_labels: Any = None, num_classes: int | None = None) -> Classifier:
    """The offline classifier of a training split, loaded from `cache_dir` or trained.

    Args:
      images: (N, H, W, C) training images in [-1, 1]. labels: (N,) integer labels.
      cache_dir: directory for `params.msgpack` + `meta.json` (e.g. `workdir/classifier`);
        None trains without caching.
      seed, steps: training seed and number of AdamW steps (part of the cache key).
      eval_images, eval_labels: held-out split for the reported `accuracy`.
      num_classes: number of classes; default max(labels) + 1.

    Returns:
      A `Classifier`; `accuracy` is on the evaluation split when given.
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"get_classifier needs images (N, H, W, C) and labels (N,); got "
                         f"{images.shape} and {labels.shape}.")
    k = int(num_classes or labels.max() + 1)
    fingerprint = _fingerprint(images, labels, k, seed, steps)
    template = jax.eval_shape(lambda: FeatureCNN(k).init(jax.random.PRNGKey(0),
                                                         images[:1])["params"])
    cache = None if cache_dir is None else Path(cache_dir)
    cached = None if cache is None else _load_cache(cache, fingerprint, template)
    if cached is None:
        params = train_classifier(images, labels, num_classes=k, seed=seed, steps=steps)
        meta = dict(fingerprint=fingerprint, image_shape=list(images.shape[1:]), num_classes=k,
                    num_train=len(images), seed=seed, steps=steps,
                    train_accuracy=accuracy(params, images, labels))
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            _atomic_write(cache / PARAMS_FILE, flax.serialization.msgpack_serialize(params))
    else:
        params, meta = cached
    acc = meta["train_accuracy"]
    if eval_images is not None:
        acc = meta["eval_accuracy"] = accuracy(params, eval_images, eval_labels)
    if cache is not None:
        _atomic_write(cache / META_FILE, json.dumps(meta, indent=2).encode())
    return Classifier(params, functools.partial(features_and_logits, params), float(acc),
                      float(meta["train_accuracy"]), k)


def get_digits_classifier(cache_dir: str | os.PathLike | None, seed: int = 0,
                          steps: int = DEFAULT_STEPS) -> Classifier:
    """`get_classifier` on the sklearn digits train split, accuracy on the test split."""
    images, labels = data.load_digits_split("train")
    test_images, test_labels = data.load_digits_split("test")
    return get_classifier(images, labels, cache_dir, seed, steps, eval_images=test_images,
                          eval_labels=test_labels, num_classes=10)
