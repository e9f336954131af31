"""FID reference statistics and FID, with a randomly initialized Inception (no download).

The network is NOT the FID Inception (random He-normal weights, `fid.random_state_dict`),
so the numbers only check the machinery: statistics are a deterministic function of the
images, every image counts (no dropped last batch), batched sums equal the unbatched
moments, and the Frechet distance between two halves of one set is small next to the
distance to a shifted set. Input size 75 (the network's minimum) keeps it cheap on CPU.
"""

import os

import jax
import ml_collections
import numpy as np
import pytest

from ebm_vs_score.evaluate import fid_stats
from ebm_vs_score.metrics import distances, fid, inception

SIZE = 75


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("inception") / "random_inception.npz")
    np.savez(path, **fid.random_state_dict(0))
    return path


@pytest.fixture(scope="module")
def params(weights_path):
    return inception.load_inception(weights_path).params  # the real loader path


def smooth_images(n, seed, shift=0.0):
    """Low-frequency random images (N, 16, 16, 3) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-0.6, 0.6, (n, 4, 4, 3)) + shift
    return np.clip(np.repeat(np.repeat(coarse, 4, 1), 4, 2), -1, 1).astype(np.float32)


def test_moments_count_every_image_and_match_unbatched_features(params):
    images = smooth_images(10, 0)
    batches = [images[:4], images[4:8], images[8:]]  # last batch short: padded, masked
    moments = fid.feature_moments(params, batches, batch_size=4, input_size=SIZE)
    assert moments.num_images == 10
    assert moments.mu.shape == (2048,) and moments.sigma.shape == (2048, 2048)
    again = fid.feature_moments(params, [images], batch_size=4, input_size=SIZE)
    np.testing.assert_array_equal(moments.mu, again.mu)  # deterministic, batching-invariant
    np.testing.assert_allclose(moments.sigma, again.sigma, rtol=1e-12, atol=0)
    x = jax.image.resize(images, (10, SIZE, SIZE, 3), "bilinear", antialias=False)
    feats, _ = inception.InceptionV3().apply({"params": params}, x)
    mu, sigma = distances.feature_statistics(np.asarray(feats))
    np.testing.assert_allclose(moments.mu, mu, rtol=1e-4, atol=1e-6)
    scale = np.abs(sigma).max()
    np.testing.assert_allclose(moments.sigma, sigma, atol=1e-4 * scale)
    assert scale > 0 and np.all(np.isfinite(moments.sigma))


@pytest.mark.slow  # two 2048x2048 sqrtm and 96 Inception passes: ~10 min on the loaded CPU
def test_two_halves_are_close_and_a_shifted_set_is_far(params, tmp_path):
    images = smooth_images(64, 1)
    reference = fid.feature_moments(params, [images[:32]], batch_size=16, input_size=SIZE)
    path = str(tmp_path / "ref.npz")
    fid.save_moments(path, reference, dataset="mock")
    loaded = fid.load_moments(path)
    np.testing.assert_array_equal(loaded.mu, reference.mu)
    same = fid.fid(params, images[32:], loaded, batch_size=16, input_size=SIZE)
    shifted = fid.fid(params, smooth_images(32, 2, shift=0.7), loaded, batch_size=16,
                      input_size=SIZE)
    assert shifted > 3 * same > 0


def test_reference_stats_mode_needs_weights_and_writes_a_file(weights_path, tmp_path):
    from ebm_vs_score import config_base, settings

    config = config_base.get_config("digits", "score")
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        fid_stats.write_reference_stats(settings.from_config(config), str(tmp_path))
    assert not os.path.exists(tmp_path / "fid_stats")
    batches = list(fid_stats.reference_batches(settings.from_config(config).data, 512))
    assert [len(b) for b in batches] == [512, 512, 476]  # all 1500, last batch kept
    levels = (batches[0] + 1) / 2 * 16
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)  # no dequantization
    cfg = ml_collections.ConfigDict(config.to_dict())
    assert cfg.eval.fid_stats is None
