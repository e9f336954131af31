"""The FID / IS Inception-v3 network in Flax, loaded from a local weights file.

Network: the "FID Inception" -- the TensorFlow graph `inception-2015-12-05` used by the
reference FID code (Heusel et al. 2017, TTUR repository) and the Inception score code
(Salimans et al. 2016), as ported by pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`,
`fid_inception_v3()`). It is torchvision's Inception-v3 (Szegedy et al. 2016, "Rethinking
the Inception architecture", Fig. 5-7 / Table 1) with 1008 classes, no aux head, and two
TF quirks: every average pool excludes the padding (`count_include_pad=False`) and the
pool branch of the last block (Mixed_7c) is a 3x3 *max* pool.

Outputs (`InceptionOutputs`): `pool3` (N, 2048), the final average pool that FID uses;
`logits` (N, 1008) = fc(pool3); `logits_unbiased` (N, 1008) = pool3 W^T without the bias,
what the original IS code feeds to its softmax (use it for `inception_score`).

Input: images (N, H, W, C) in [-1, 1] with C in {1, 3} (grey is repeated to RGB), resized
to 299 x 299 bilinearly with half-pixel centres and no antialiasing, i.e. pytorch-fid's
`F.interpolate(..., align_corners=False)` after its `normalize_input`; the TF FID graph
resizes with TF1's legacy bilinear kernel, so its numbers differ slightly (as pytorch-fid
documents for itself).

Weights file format (`load_inception(path)`): `.npz` (`np.savez`) or `.pkl` (a pickled
dict) of named float arrays with exactly pytorch-fid's `state_dict` names and PyTorch
layouts, for each BasicConv2d `<prefix>` (e.g. `Conv2d_1a_3x3`, `Mixed_5b.branch5x5_1`):

  <prefix>.conv.weight       (out, in, kh, kw)
  <prefix>.bn.weight, .bn.bias, .bn.running_mean, .bn.running_var   (out,)  (eps 1e-3)

plus `fc.weight` (1008, 2048) and `fc.bias` (1008,); `*.num_batches_tracked` and other
extra names are ignored. `expected_weight_shapes()` lists all 472 names. batch normalization is
folded into the convolutions at load time (inference only). Make the file from the
pytorch-fid checkpoint with `convert_torch_checkpoint` (the only step that needs torch):

  python scripts/convert_inception_weights.py \
      --src=pt_inception-2015-12-05-6726825d.pth --dst=OUT.npz
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INCEPTION_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
                         "fid_weights/pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3  # torchvision BasicConv2d / TF graph batch normalization epsilon
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: features comparable across devices


def missing_weights_message(path: Any) -> str:
    """The one-sentence error for missing Inception weights: what, where from, which flag."""
    return (f"FID/IS Inception weights not found (eval.inception_weights={path!r}): on a "
            f"machine with internet download pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
            f"(the Inception-v3 of the TF FID code / TF-hub, ported to PyTorch) from "
            f"{INCEPTION_WEIGHTS_URL}, convert it with `python "
            f"scripts/convert_inception_weights.py --src=pt_inception-2015-12-05-6726825d.pth "
            f"--dst=inception_fid.npz` (needs torch), copy inception_fid.npz to this machine "
            f"and pass "
            f"--config.eval.inception_weights=/path/to/inception_fid.npz.")


# ----------------------------------------------------------------------------------------
# Network (module names = pytorch-fid state_dict names)
# ----------------------------------------------------------------------------------------


class BasicConv(nn.Module):
    """Conv + (folded) batch normalization + ReLU: torchvision's BasicConv2d with BN folded in."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = [(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])]
        x = nn.Conv(self.features, self.kernel, strides=self.strides, padding=pad,
                    precision=_HIGHEST, name="conv")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool that does not count the zero padding (TF semantics)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    pad = "VALID" if stride == 2 else ((1, 1), (1, 1))
    return nn.max_pool(x, (3, 3), (stride, stride), pad)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (Szegedy et al. 2016, Fig. 5)."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorized 7x7 convolutions (Szegedy et al. 2016, Fig. 6)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7, row, col = self.channels_7x7, dict(kernel=(1, 7), padding=(0, 3)), \
            dict(kernel=(7, 1), padding=(3, 0))
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
        b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        for i, (features, shape) in enumerate([(c7, col), (c7, row), (c7, col), (192, row)]):
            bd = BasicConv(features, **shape, name=f"branch7x7dbl_{i + 2}")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: expanded filter banks (Szegedy et al. 2016, Fig. 7); `pool` is 'avg'
    for Mixed_7b and 'max' for the FID graph's Mixed_7c."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                              BasicConv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                              BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-v3: x (N, H, W, 3) in [-1, 1], H, W >= 75 -> (pool3, logits).

    Returns pool3 features (N, 2048) and logits (N, 1008); `mixed_7c_pool='avg'` gives the
    standard (keras / paper) network instead of the FID graph's max pool.
    """

    mixed_7c_pool: str = "max"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, 2)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name)(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE(self.mixed_7c_pool, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        return pool3, nn.Dense(NUM_LOGITS, precision=_HIGHEST, name="fc")(pool3)


# ----------------------------------------------------------------------------------------
# Weights: pytorch-fid state_dict names -> Flax params (batch normalization folded)
# ----------------------------------------------------------------------------------------


@functools.cache
def _param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax param path -> shape of `InceptionV3` (traced abstractly, nothing allocated)."""
    tree = jax.eval_shape(lambda: InceptionV3().init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 75, 75, 3))))["params"]
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def expected_weight_shapes() -> dict[str, tuple[int, ...]]:
    """Every name the weights file must hold, with its PyTorch-layout shape (472 names)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path, shape in _param_shapes().items():
        if path[0] == "fc":
            shapes["fc.weight" if path[1] == "kernel" else "fc.bias"] = \
                shape[::-1] if path[1] == "kernel" else shape
        elif path[-1] == "kernel":  # (kh, kw, in, out) -> torch (out, in, kh, kw)
            prefix = ".".join(path[:-2])
            shapes[f"{prefix}.conv.weight"] = (shape[3], shape[2], shape[0], shape[1])
            for stat in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.bn.{stat}"] = (shape[3],)
    return shapes


def _check_names(named: Mapping[str, Any]) -> None:
    """Raises ValueError naming the missing or mis-shaped arrays of a weights file."""
    expected = expected_weight_shapes()
    missing = [n for n in expected if n not in named]
    wrong = [f"{n} {np.shape(named[n])} != {s}" for n, s in expected.items()
             if n in named and tuple(np.shape(named[n])) != s]
    if missing or wrong:
        raise ValueError(f"Inception weights file is not in the pytorch-fid FID format: "
                         f"{len(missing)} missing arrays (e.g. {missing[:3]}) and {len(wrong)} "
                         f"with wrong shapes (e.g. {wrong[:3]}); see the format in "
                         "ebm_vs_score/metrics/inception.py.")


def params_from_state_dict(named: Mapping[str, Any]) -> dict:
    """Flax params of `InceptionV3` from pytorch-fid `state_dict` arrays (see module doc).

    Each conv's batch normalization is folded in: with s = gamma / sqrt(var + 1e-3), the kernel is
    W s (per output channel, transposed OIHW -> HWIO) and the bias is beta - mean s.
    """
    _check_names(named)
    params: dict = {}
    for path in _param_shapes():
        if path[-1] != "kernel":
            continue
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if path[0] == "fc":
            node["kernel"] = np.asarray(named["fc.weight"], np.float32).T
            node["bias"] = np.asarray(named["fc.bias"], np.float32)
            continue
        p = ".".join(path[:-2])
        get = lambda name, p=p: np.asarray(named[f"{p}.{name}"], np.float64)
        scale = get("bn.weight") / np.sqrt(get("bn.running_var") + BN_EPS)
        node["kernel"] = (get("conv.weight").transpose(2, 3, 1, 0) * scale).astype(np.float32)
        node["bias"] = (get("bn.bias") - get("bn.running_mean") * scale).astype(np.float32)
    return params


def _read_named_arrays(path: Path) -> dict[str, np.ndarray]:
    """name -> array from an `.npz` (np.savez) or a `.pkl` (pickled dict) file."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if path.suffix in (".pkl", ".pickle"):
        with path.open("rb") as f:
            named = pickle.load(f)  # a local file the user named; trusted like a checkpoint
        if not isinstance(named, Mapping):
            raise ValueError(f"{path} holds a {type(named).__name__}, not a dict of arrays.")
        return {str(k): np.asarray(v) for k, v in named.items()}
    raise ValueError(f"Inception weights file {path} must be a .npz or .pkl of named arrays; "
                     f"convert pytorch-fid's .pth with `python "
                     f"scripts/convert_inception_weights.py --src={path} --dst=inception_fid.npz` "
                     f"(needs torch) and point "
                     f"--config.eval.inception_weights at the .npz.")


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


class InceptionOutputs(NamedTuple):
    """pool3 (N, 2048) for FID; logits (N, 1008); logits_unbiased (N, 1008) for IS."""

    pool3: np.ndarray
    logits: np.ndarray
    logits_unbiased: np.ndarray


class Inception(NamedTuple):
    """Loaded FID Inception: `params` and `apply(images, batch_size=100) -> InceptionOutputs`."""

    params: Any
    apply: Callable[..., InceptionOutputs]


def preprocess(images: jax.Array) -> jax.Array:
    """(N, H, W, 1 or 3) in [-1, 1] -> (N, 299, 299, 3): grey to RGB, bilinear resize."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Inception needs images (N, H, W, 1|3) in [-1, 1]; got {images.shape}.")
    images = jnp.broadcast_to(images, images.shape[:3] + (3,))
    return jax.image.resize(images, (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear",
                            antialias=False)


@jax.jit
def _apply_batch(params: Any, images: jax.Array) -> tuple[jax.Array, ...]:
    pool3, logits = InceptionV3().apply({"params": params}, preprocess(images))
    return pool3, logits, logits - params["fc"]["bias"]


def inception_outputs(params: Any, images: Any, batch_size: int = 100) -> InceptionOutputs:
    """pool3 features and logits of images (N, H, W, C) in [-1, 1], batched (last padded)."""
    images = np.asarray(images, np.float32)
    n, outs = images.shape[0], []
    batch_size = max(1, min(batch_size, n))
    for start in range(0, n, batch_size):
        batch = images[start:start + batch_size]
        pad = batch_size - batch.shape[0]
        batch = np.pad(batch, [(0, pad)] + [(0, 0)] * (batch.ndim - 1))
        outs.append([np.asarray(o)[:batch_size - pad] for o in _apply_batch(params, batch)])
    return InceptionOutputs(*(np.concatenate(parts) for parts in zip(*outs, strict=True)))


def load_inception(path: str | Path | None) -> Inception:
    """Loads the FID Inception network from the local weights file `eval.inception_weights`.

    Raises:
      FileNotFoundError: `path` is None or not a file, with one sentence saying where to get
        the weights and which setting to point at them.
      ValueError: the file is not in the documented format.
    """
    if path is None or not Path(path).expanduser().is_file():
        raise FileNotFoundError(missing_weights_message(None if path is None else str(path)))
    params = params_from_state_dict(_read_named_arrays(Path(path).expanduser()))
    params = jax.device_put(params)
    return Inception(params, functools.partial(inception_outputs, params))


def convert_torch_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Converts pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` into the `.npz` format.

    Needs torch (run it wherever the .pth was downloaded); checks the names and shapes.
    """
    import torch  # only this conversion needs torch

    state = torch.load(str(src), map_location="cpu")
    named = {k: v.detach().cpu().numpy() for k, v in state.items()
             if not k.endswith("num_batches_tracked")}
    _check_names(named)
    np.savez(dst, **named)

