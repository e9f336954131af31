"""Sample-quality distances between two sets of features (pure numpy / scipy).

All functions take feature arrays of shape (N, D) (images are flattened by the caller or
embedded first by `metrics.classifier` / `metrics.inception`) and compute in float64 on the
host. Pairwise quantities are computed in row blocks of `block_size`, so 10k x 10k
comparisons never hold an N x M matrix in memory.

* `frechet_distance`: Heusel et al. 2017, "GANs trained by a two time-scale update rule
  converge to a local Nash equilibrium", eq. (6), on `feature_statistics`.
* `mmd`: unbiased MMD^2 with Gaussian RBF kernels, Gretton et al. 2012, "A kernel
  two-sample test", JMLR, eq. (3) (Lemma 6).
* `sliced_wasserstein`: Bonneel et al. 2015, "Sliced and Radon Wasserstein barycenters of
  measures", eq. (4): SW_p^p = E_theta W_p^p(theta # mu, theta # nu), theta ~ U(S^{D-1}).
* `precision_recall`: improved precision and recall with k-NN manifolds, Kynkaanniemi et
  al. 2019, "Improved precision and recall metric for assessing generative models", eq. (1)-(3).
* `inception_score`: Salimans et al. 2016, "Improved techniques for training GANs", Sec. 4:
  IS = exp(E_x KL(p(y|x) || p(y))), mean and std over splits as in their code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import scipy.linalg
import scipy.special

DEFAULT_BLOCK_SIZE = 1024
_MEDIAN_HEURISTIC_MAX_POINTS = 1000  # subsample for the median of pairwise distances


def _as_features(x: Any, name: str) -> np.ndarray:
    """float64 (N, D) view of a feature array; (N, ...) inputs are flattened."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) feature array, got shape {x.shape}.")
    return x.reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------------------
# Frechet distance
# ----------------------------------------------------------------------------------------


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64.

    These are the Gaussian moments that enter the Frechet distance (Heusel et al. 2017,
    eq. (6)); the covariance uses N - 1 like `np.cov` and the reference FID code.
    """
    f = _as_features(features, "features")
    if f.shape[0] < 2:
        raise ValueError("feature_statistics needs at least 2 examples for a covariance.")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
    """(sigma1 sigma2)^{1/2} by scipy's Schur method, retried with eps I added to both
    covariances when the result is not finite or inaccurate (singular covariances). scipy's
    warning on a singular product is silenced on the first try: the retry handles that case."""
    product = sigma1 @ sigma2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(product)
    scale = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
    error = np.linalg.norm(covmean @ covmean - product) / scale
    if not np.all(np.isfinite(covmean)) or error > 1e-5:
        offset = eps * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            raise ValueError(f"frechet_distance: the matrix square root has an imaginary "
                             f"component of {imag:.3g}; the covariances are numerically "
                             "invalid (use more samples than feature dimensions).")
        covmean = covmean.real
    return covmean


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any,
                     eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6).

    d^2 = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}), the squared
    2-Wasserstein distance between the Gaussians; FID when the moments are Inception pool3
    statistics. The square root is `scipy.linalg.sqrtm`, retried with `eps` I added to both
    covariances if it fails (the fallback of the reference TF / pytorch-fid code), and its
    negligible imaginary part is dropped.

    Args:
      mu1, mu2: (D,) means. sigma1, sigma2: (D, D) covariances (see `feature_statistics`).
      eps: diagonal offset of the fallback.

    Returns:
      The distance as a Python float (squared units of the features, as FID is reported).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: inconsistent shapes mu1 {mu1.shape}, sigma1 "
                         f"{sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}.")
    covmean = _sqrtm_product(sigma1, sigma2, eps)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# ----------------------------------------------------------------------------------------
# Blockwise pairwise distances
# ----------------------------------------------------------------------------------------


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)), clipped at 0."""
    d2 = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def _blockwise(a: np.ndarray, b: np.ndarray, reduce: Callable[[np.ndarray, int], Any],
               block_size: int) -> list[Any]:
    """[reduce(squared distances of rows a[i:i+block] to all of b, i) for each block]."""
    return [reduce(_sq_dists(a[i:i + block_size], b), i)
            for i in range(0, a.shape[0], block_size)]


# ----------------------------------------------------------------------------------------
# MMD
# ----------------------------------------------------------------------------------------


def median_bandwidth(x: Any, y: Any, max_points: int = _MEDIAN_HEURISTIC_MAX_POINTS) -> float:
    """Median heuristic: median pairwise distance of the pooled sample (Gretton et al. 2012,
    Sec. 8), on at most `max_points` evenly spaced points of each set (deterministic)."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    pooled = np.concatenate([x[np.linspace(0, len(x) - 1, min(len(x), max_points)).astype(int)],
                             y[np.linspace(0, len(y) - 1, min(len(y), max_points)).astype(int)]])
    d2 = _sq_dists(pooled, pooled)[np.triu_indices(len(pooled), k=1)]
    median = float(np.median(np.sqrt(d2)))
    return median if median > 0 else 1.0


def _kernel_sum(a: np.ndarray, b: np.ndarray, bandwidths: np.ndarray, block_size: int,
                exclude_diagonal: bool) -> float:
    """sum_{i, j} sum_h exp(-||a_i - b_j||^2 / (2 h^2)), optionally without i == j."""
    def reduce(d2: np.ndarray, start: int) -> float:
        k = np.exp(-d2[..., None] / (2.0 * bandwidths**2)).sum(-1)
        if exclude_diagonal:
            rows = np.arange(k.shape[0])
            k[rows, start + rows] = 0.0
        return float(k.sum())

    return sum(_blockwise(a, b, reduce, block_size))


def mmd(x: Any, y: Any, bandwidths: float | Sequence[float] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE) -> float:
    """Unbiased MMD^2_u with a (sum of) Gaussian RBF kernel(s) (Gretton et al. 2012, eq. 3).

    MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
              - 2/(mn) sum_{i,j} k(x_i, y_j),   k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2)).

    Unbiased, so it can be slightly negative when the two distributions are equal.

    Args:
      x: (m, D) features, m >= 2. y: (n, D) features, n >= 2.
      bandwidths: kernel length scale(s) h; None = the median heuristic
        (`median_bandwidth`); a list gives the sum of the kernels.
      block_size: rows per block of the pairwise computation.

    Returns:
      MMD^2_u as a Python float.
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd needs (m, D) and (n, D) arrays with m, n >= 2; got {x.shape}, "
                         f"{y.shape}.")
    h = np.atleast_1d(median_bandwidth(x, y) if bandwidths is None else bandwidths)
    h = np.asarray(h, np.float64)
    if np.any(h <= 0):
        raise ValueError(f"mmd bandwidths must be positive, got {h.tolist()}.")
    kxx = _kernel_sum(x, x, h, block_size, exclude_diagonal=True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, h, block_size, exclude_diagonal=True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, h, block_size, exclude_diagonal=False) / (m * n)
    return kxx + kyy - 2.0 * kxy


# ----------------------------------------------------------------------------------------
# Sliced Wasserstein
# ----------------------------------------------------------------------------------------


def _random_directions(key_or_seed: Any, num: int, dim: int) -> np.ndarray:
    """num directions uniform on the unit sphere S^{dim-1}, from a JAX key or an int seed."""
    if isinstance(key_or_seed, int | np.integer | Sequence | np.random.Generator):
        g = np.random.default_rng(key_or_seed).standard_normal((num, dim))
    else:  # a JAX PRNG key (raw uint32 or typed)
        g = np.asarray(jax.random.normal(key_or_seed, (num, dim)), np.float64)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _wasserstein_1d_pow(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    """W_p^p between the empirical laws of the columns of u (m, P) and v (n, P), exactly:
    int_0^1 |F_u^{-1}(q) - F_v^{-1}(q)|^p dq over the merged quantile breakpoints."""
    m, n = u.shape[0], v.shape[0]
    u, v = np.sort(u, axis=0), np.sort(v, axis=0)
    levels = np.union1d(np.arange(1, m + 1) / m, np.arange(1, n + 1) / n)
    widths = np.diff(levels, prepend=0.0)
    mid = levels - widths / 2
    iu = np.minimum((mid * m).astype(int), m - 1)
    iv = np.minimum((mid * n).astype(int), n - 1)
    return np.sum(widths[:, None] * np.abs(u[iu] - v[iv]) ** p, axis=0)


def sliced_wasserstein(x: Any, y: Any, key_or_seed: Any, num_projections: int = 128,
                       p: float = 2.0) -> float:
    """Monte Carlo sliced p-Wasserstein distance (Bonneel et al. 2015, eq. 4).

    SW_p(x, y) = (1/L sum_l W_p^p(<theta_l, x>, <theta_l, y>))^{1/p} with theta_l uniform on
    the sphere; each 1-D W_p is computed exactly between the empirical distributions (any
    sample sizes).

    Args:
      x: (m, D) samples. y: (n, D) samples.
      key_or_seed: a JAX PRNG key or an int seed for the projections.
      num_projections: number L of random directions.
      p: order of the Wasserstein distance (>= 1).

    Returns:
      SW_p as a Python float (units of the data).
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1] or p < 1:
        raise ValueError(f"sliced_wasserstein needs equal feature dims and p >= 1; got "
                         f"{x.shape}, {y.shape}, p={p}.")
    theta = _random_directions(key_or_seed, num_projections, x.shape[1])
    return float(np.mean(_wasserstein_1d_pow(x @ theta.T, y @ theta.T, p)) ** (1.0 / p))


# ----------------------------------------------------------------------------------------
# Improved precision and recall
# ----------------------------------------------------------------------------------------


class PrecisionRecall(NamedTuple):
    """Kynkaanniemi et al. 2019 improved precision (eq. 2) and recall (eq. 3)."""

    precision: float
    recall: float


def knn_radii(features: Any, k: int = 3, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in the same set (self excluded):
    the radii of the k-NN manifold estimate (Kynkaanniemi et al. 2019, eq. 1)."""
    f = _as_features(features, "features")
    if not 1 <= k < f.shape[0]:
        raise ValueError(f"knn_radii needs 1 <= k < N; got k={k}, N={f.shape[0]}.")
    # the k-th smallest squared distance in a row that includes self (0) is the k-th neighbour
    radii = _blockwise(f, f, lambda d2, _: np.partition(d2, k, axis=1)[:, k], block_size)
    return np.sqrt(np.concatenate(radii))


def manifold_coverage(queries: Any, reference: Any, radii: np.ndarray,
                      block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """f(phi, Phi) of Kynkaanniemi et al. 2019 eq. (1) for each query: 1 if it lies in some
    ball B(phi', radii[phi']) around a reference point phi', else 0. Returns bool (N_q,)."""
    q, r = _as_features(queries, "queries"), _as_features(reference, "reference")
    r2 = np.asarray(radii, np.float64) ** 2
    inside = _blockwise(q, r, lambda d2, _: np.any(d2 <= r2[None, :], axis=1), block_size)
    return np.concatenate(inside)


def precision_recall(real: Any, fake: Any, k: int = 3,
                     block_size: int = DEFAULT_BLOCK_SIZE) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-3), k = 3 by default.

    precision = mean over fake phi_g of f(phi_g, Phi_r); recall = mean over real phi_r of
    f(phi_r, Phi_g), with each manifold the union of balls reaching each point's k-th
    nearest neighbour. All distances are computed in blocks of `block_size` rows, so the
    memory is O(block_size * N), not O(N^2).

    Args:
      real: (N_r, D) real features. fake: (N_g, D) generated features.
      k: neighbourhood size. block_size: rows per block.
    """
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    real_radii = knn_radii(real, k, block_size)
    fake_radii = knn_radii(fake, k, block_size)
    precision = manifold_coverage(fake, real, real_radii, block_size).mean()
    recall = manifold_coverage(real, fake, fake_radii, block_size).mean()
    return PrecisionRecall(float(precision), float(recall))


# ----------------------------------------------------------------------------------------
# Inception score
# ----------------------------------------------------------------------------------------


def inception_score(logits: Any, splits: int = 10) -> tuple[float, float]:
    """Inception score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016, Sec. 4).

    As in the reference code, the N examples are cut into `splits` consecutive parts; each
    part gets its own marginal p(y) and score, and the mean and std over parts are reported.
    With the offline digits classifier's logits this is the "IS analogue"; with Inception
    use its `logits_unbiased` (the reference code's softmax has no bias).

    Args:
      logits: (N, C) unnormalized class log-probabilities, N >= splits.
      splits: number of parts.

    Returns:
      (mean, std) over splits. Uniform predictions give 1; confident predictions spread
      evenly over C classes give C.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"inception_score needs (N, C) logits with N >= splits; got shape "
                         f"{logits.shape} and splits={splits}.")
    scores = []
    for part in np.array_split(logits, splits):
        log_p = scipy.special.log_softmax(part, axis=1)  # log p(y|x)
        log_marginal = scipy.special.logsumexp(log_p, axis=0) - np.log(part.shape[0])
        kl = np.sum(np.exp(log_p) * (log_p - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
