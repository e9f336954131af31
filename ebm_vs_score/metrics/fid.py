"""FID reference statistics (a file) and the FID of samples, batched and sharded.

FID (Heusel et al. 2017, eq. 6) compares the Gaussian moments of Inception pool3 features
of samples with those of a reference set. Reference protocol, the standard one (TTUR
code; score_sde issue #3 / PR #5):
  * ALL images of the split (CIFAR-10: the 50,000 training images), none dropped: the last
    partial batch is padded and its padding masked out of the sums;
  * the stored uint8 levels p scaled to p/255*2-1 in [-1, 1] (`inception.preprocess` maps
    them to the network's input), with NO dequantization noise and no flips;
  * mean and unbiased covariance (N - 1) of the 2048 pool3 features, in float64.
`save_moments` / `load_moments` keep them in a file (keys mu, sigma, num_images, protocol);
`--mode=fid_stats` (`ebm_vs_score.evaluate.fid_stats`) writes that file of a train split,
and eval uses it as the reference of its FID.

Batches are sharded over a 1-D `data` mesh of all devices; the per-batch sums (count,
sum, sum of outer products) are reduced inside the compiled function, so every process
feeds only its rows (`jax.make_array_from_process_local_data`) and gets the global sums.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ebm_vs_score.metrics import inception

PROTOCOL = ("all images of the split, uint8 levels scaled to [-1, 1], no dequantization, "
            "no flips, last batch kept; pool3 mean and covariance (N - 1), float64")


class FeatureMoments(NamedTuple):
    """Mean (2048,), unbiased covariance (2048, 2048) and the number of images."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A randomly initialized FID Inception in the pytorch-fid format (tests, rehearsals).

    He-normal convolutions, identity batch normalization (so activations keep their scale
    through the 94 ReLU layers), small random fc: NOT the FID network, only its shapes.
    """
    rng = np.random.default_rng(seed)
    named = {}
    for name, shape in inception.expected_weight_shapes().items():
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            named[name] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        elif name.endswith("running_var"):
            named[name] = np.full(shape, 1.0 - inception.BN_EPS, np.float32)
        elif name.endswith("bn.weight"):
            named[name] = np.ones(shape, np.float32)
        elif name == "fc.weight":
            named[name] = rng.normal(0.0, 0.02, shape).astype(np.float32)
        else:
            named[name] = np.zeros(shape, np.float32)
    return named


def _mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


@functools.partial(jax.jit, static_argnames="input_size")
def _batch_sums(params: Any, images: jax.Array, mask: jax.Array, input_size: int):
    """(count, sum, sum of outer products) of the pool3 features of the unmasked images."""
    x = jnp.broadcast_to(images, images.shape[:3] + (3,))
    x = jax.image.resize(x, (x.shape[0], input_size, input_size, 3), "bilinear",
                         antialias=False)
    pool3, _ = inception.InceptionV3().apply({"params": params}, x)
    pool3 = pool3 * mask[:, None]
    outer = jnp.matmul(pool3.T, pool3, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(mask), jnp.sum(pool3, axis=0), outer


def _padded(batch: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    pad = size - len(batch)
    mask = np.concatenate([np.ones(len(batch), np.float32), np.zeros(pad, np.float32)])
    return np.pad(batch, [(0, pad)] + [(0, 0)] * (batch.ndim - 1)), mask


def _local(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array of x (the same on every process) from this process's rows."""
    count, index = jax.process_count(), jax.process_index()
    rows = np.array_split(np.arange(len(x)), count)[index]
    return jax.make_array_from_process_local_data(sharding, x[rows], x.shape)


def feature_moments(params: Any, batches: Iterable[np.ndarray], *, batch_size: int,
                    input_size: int = inception.INPUT_SIZE) -> FeatureMoments:
    """Pool3 mean and covariance of every image of `batches` (each (b <= batch_size, H, W, C)
    in [-1, 1], the same on every process), sharded over all devices.

    `batch_size` is rounded up to a multiple of the device count; short batches are padded
    and masked. `input_size` < 299 only for tests (a smaller, cheaper network input).
    """
    mesh = _mesh()
    size = -(-int(batch_size) // mesh.size) * mesh.size
    sharding = NamedSharding(mesh, P("data"))
    n, total, outer = 0.0, np.zeros(inception.POOL3_DIM), np.zeros((inception.POOL3_DIM,) * 2)
    for batch in batches:
        for start in range(0, len(batch), size):
            x, mask = _padded(np.asarray(batch[start:start + size], np.float32), size)
            c, s, o = _batch_sums(params, _local(x, sharding), _local(mask, sharding),
                                  input_size=input_size)
            n += float(c)
            total += np.asarray(s, np.float64)
            outer += np.asarray(o, np.float64)
    if n < 2:
        raise ValueError(f"FID statistics need at least 2 images; got {int(n)}.")
    mu = total / n
    sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
    return FeatureMoments(mu, sigma, int(n))


def save_moments(path: str, moments: FeatureMoments, **meta: Any) -> None:
    """Writes mu, sigma, num_images, the protocol and `meta` to an npz (atomically)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, mu=moments.mu, sigma=moments.sigma, num_images=moments.num_images,
             protocol=PROTOCOL, **{k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_moments(path: str) -> FeatureMoments:
    """The reference statistics written by `save_moments` (FileNotFoundError if absent)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID reference statistics {path!r} not found: write them "
                                "with `python -m ebm_vs_score.main --mode=fid_stats --config=... "
                                "--workdir=...` and pass --config.eval.fid_stats=PATH.")
    with np.load(path) as f:
        return FeatureMoments(f["mu"], f["sigma"], int(f["num_images"]))


def fid(params: Any, samples: np.ndarray, reference: FeatureMoments, *, batch_size: int,
        input_size: int = inception.INPUT_SIZE) -> float:
    """FID of `samples` (N, H, W, C) in [-1, 1] against reference moments."""
    from ebm_vs_score.metrics.distances import frechet_distance

    chunks = (samples[i:i + batch_size] for i in range(0, len(samples), batch_size))
    ours = feature_moments(params, chunks, batch_size=batch_size, input_size=input_size)
    return frechet_distance(ours.mu, ours.sigma, reference.mu, reference.sigma)
