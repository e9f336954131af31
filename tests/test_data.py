"""Tests of ebm_vs_score.data: toys and exact mixture densities, digits, TFDS pipelines."""

import gc
import itertools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_vs_score import data, settings


def make_config(dataset, **overrides):
    """The ``data.*`` settings of ``dataset`` (32x32x3 images unless overridden)."""
    fields = dict(dataset=dataset, image_size=32, num_channels=3, data_dir=None,
                  random_flip=False, dequantize=False, toy_dim=2, num_components=8)
    return settings.DataSettings(**dict(fields, **overrides))


def take(iterator, k):
    """First k items of an iterator, then release it (TF iterators must not outlive tests)."""
    items = list(itertools.islice(iterator, k))
    if hasattr(iterator, "close"):
        iterator.close()
    del iterator
    gc.collect()
    return items


def grid_integral(log_prob, lim=3.5, num=501):
    """Riemann sum of exp(log_prob) over [-lim, lim]^2."""
    side = jnp.linspace(-lim, lim, num)
    xx, yy = jnp.meshgrid(side, side)
    points = jnp.stack([xx.ravel(), yy.ravel()], axis=1)
    return float(jnp.sum(jnp.exp(jax.jit(log_prob)(points))) * (side[1] - side[0]) ** 2)


def test_importing_data_does_not_import_tensorflow():
    code = "import sys, ebm_vs_score.data; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", data.TOY_NAMES)
def test_toy_shape_determinism_and_unit_variance(name):
    x = data.sample_toy(name, 0, 20_000)
    assert x.shape == (20_000, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, data.sample_toy(name, 0, 20_000))
    assert not np.array_equal(x, data.sample_toy(name, 1, 20_000))
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(x.var(0).mean(), 1.0, atol=0.05)


def test_toy_accepts_generator_and_jax_key():
    key = jax.random.key(3)
    np.testing.assert_array_equal(data.sample_toy("moons", key, 5),
                                  data.sample_toy("moons", key, 5))
    assert data.sample_toy("spiral", np.random.default_rng(0), 7).shape == (7, 2)
    assert data.sample_toy("gmm", 0, 9, dim=5, num_components=4).shape == (9, 5)
    with pytest.raises(ValueError, match="valid toys"):
        data.sample_toy("swirl", 0, 3)


@pytest.mark.parametrize("name", ["checkerboard", "8gaussians", "gmm"])
def test_toy_log_prob_integrates_to_one_and_covers_samples(name):
    log_prob = data.toy_log_prob(name)
    assert grid_integral(log_prob) == pytest.approx(1.0, abs=5e-3)
    assert np.all(np.isfinite(log_prob(jnp.asarray(data.sample_toy(name, 0, 1000)))))


def test_checkerboard_log_prob_is_zero_density_off_board():
    log_prob = data.toy_log_prob("checkerboard")
    side = np.sqrt(3) / 2
    off = jnp.array([[0.5, -0.5], [-1.5, -0.5], [2.0, 0.0]]) * side  # unoccupied / outside
    on = jnp.array([[0.5, 0.5], [-0.5, -0.5]]) * side
    assert np.all(np.isneginf(log_prob(off)))
    np.testing.assert_allclose(log_prob(on), np.log(1 / 6), rtol=1e-6)


@pytest.mark.parametrize("name", ["spiral", "moons"])
def test_toy_log_prob_without_closed_form_raises(name):
    with pytest.raises(ValueError, match="no closed-form density"):
        data.toy_log_prob(name)


# ------------------------------------------------------------------ Gaussian mixtures


@pytest.fixture(scope="module")
def mixture():
    return data.gmm()


def test_gmm_is_fixed_centred_unit_variance_and_well_separated():
    for dim in (2, 5):
        mix = data.gmm(dim=dim, num_components=6)
        np.testing.assert_allclose(mix.mean(), 0.0, atol=1e-5)
        assert float(jnp.trace(mix.covariance())) / dim == pytest.approx(1.0, rel=1e-5)
        dists = np.linalg.norm(mix.means[:, None] - mix.means[None], axis=-1)
        assert np.min(dists + np.eye(6) * 1e9) >= 5 * float(mix.stds.max())
    # Fixed: recomputed from scratch (past the cache) it is the same; another seed is not.
    fresh = data.gmm.__wrapped__(2, 8, 0)
    for field in ("weights", "means", "stds"):
        np.testing.assert_array_equal(getattr(fresh, field), getattr(data.gmm(), field))
    assert not np.allclose(data.gmm(seed=1).means, data.gmm().means)
    eight = data.eight_gaussians()
    np.testing.assert_allclose(eight.covariance(), np.eye(2), atol=1e-6)


def test_mixture_log_prob_integrates_to_one(mixture):
    assert grid_integral(mixture.log_prob) == pytest.approx(1.0, abs=2e-3)


def test_mixture_score_is_grad_of_log_prob(mixture):
    x = 1.5 * jax.random.normal(jax.random.key(0), (64, 2))
    expected = jax.jit(jax.vmap(jax.grad(mixture.log_prob)))(x)
    np.testing.assert_allclose(mixture.score(x), expected, rtol=1e-4, atol=1e-4)


def test_mixture_sample_moments_and_numpy_sampler_agree(mixture):
    x = mixture.sample(jax.random.key(1), 100_000)
    np.testing.assert_allclose(x.mean(0), mixture.mean(), atol=0.02)
    np.testing.assert_allclose(jnp.cov(x.T), mixture.covariance(), atol=0.02)
    y = data.sample_toy("gmm", 0, 100_000)
    np.testing.assert_allclose(np.cov(y.T), mixture.covariance(), atol=0.02)


def test_noisy_mixture_matches_monte_carlo(mixture):
    alpha, sigma = 0.8, 0.5
    k0, k1 = jax.random.split(jax.random.key(2))
    x0 = mixture.sample(k0, 100_000)
    xt = alpha * x0 + sigma * jax.random.normal(k1, x0.shape)
    noisy = mixture.noisy(alpha, sigma)
    np.testing.assert_allclose(xt.mean(0), noisy.mean(), atol=0.02)
    np.testing.assert_allclose(jnp.cov(xt.T), noisy.covariance(), atol=0.02)
    np.testing.assert_allclose(noisy.stds, np.sqrt(alpha**2 * mixture.stds**2 + sigma**2))


def test_noisy_score_is_grad_of_noisy_log_prob_per_example(mixture):
    keys = jax.random.split(jax.random.key(3), 3)
    x = 1.5 * jax.random.normal(keys[0], (32, 2))
    alpha = jax.random.uniform(keys[1], (32,), minval=0.1, maxval=1.0)
    sigma = jax.random.uniform(keys[2], (32,), minval=0.05, maxval=2.0)
    grad = jax.vmap(jax.grad(lambda xi, a, s: mixture.noisy_log_prob(xi[None], a, s)[0]))

    @jax.jit
    def pairs(x, alpha, sigma):  # (value, expected) pairs, compiled once
        return [(mixture.noisy_score(x, alpha, sigma), grad(x, alpha, sigma)),
                # scalar alpha/sigma broadcast; per-example values equal scalar ones.
                (mixture.noisy_log_prob(x, 0.7, 0.3), mixture.noisy(0.7, 0.3).log_prob(x)),
                (mixture.noisy_log_prob(x[:1], alpha[:1], sigma[:1]),
                 mixture.noisy(alpha[0], sigma[0]).log_prob(x[:1]))]

    for value, expected in pairs(x, alpha, sigma):
        assert value.shape == expected.shape
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(AssertionError):
        mixture.noisy_score(x, alpha[:, None], sigma)


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_complete_and_scaled():
    from sklearn.datasets import load_digits

    train, train_labels = data.load_digits_split("train")
    test, test_labels = data.load_digits_split("test")
    assert train.shape == (1500, 8, 8, 1) and test.shape == (297, 8, 8, 1)
    assert train.dtype == np.float32 and train_labels.shape == (1500,)
    assert train.min() == -1.0 and train.max() == 1.0
    levels = (np.concatenate([train, test]) + 1) / 2 * 16
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-5)  # 17 exact levels
    digits = load_digits()
    np.testing.assert_array_equal(np.round(levels[..., 0]), digits.images)
    np.testing.assert_array_equal(np.concatenate([train_labels, test_labels]), digits.target)
    with pytest.raises(ValueError, match="valid splits"):
        data.load_digits_split("validation")


# ------------------------------------------------------------------------ get_dataset


@pytest.mark.parametrize("name", ["moons", "gmm", "digits"])
def test_get_dataset_deterministic_resumable_and_sharded(name):
    config = make_config(name, dequantize=name == "digits", random_flip=name == "digits")
    kwargs = dict(batch_size=64, split="train", seed=7)
    run = take(data.get_dataset(config, **kwargs), 6)
    assert run[0]["x"].shape == (64, *data.data_shape(config))
    assert run[0]["x"].dtype == np.float32
    rerun = take(data.get_dataset(config, **kwargs), 6)
    resumed = take(data.get_dataset(config, start_step=4, **kwargs), 2)
    other_seed = take(data.get_dataset(config, batch_size=64, split="train", seed=8), 1)
    procs = [take(data.get_dataset(config, process_index=i, process_count=2, **kwargs), 6)
             for i in range(2)]
    for step in range(6):
        np.testing.assert_array_equal(run[step]["x"], rerun[step]["x"])
        assert procs[0][step]["x"].shape[0] == 32
        joined = np.concatenate([procs[0][step]["x"], procs[1][step]["x"]])
        np.testing.assert_array_equal(joined, run[step]["x"])
    for i in range(2):
        np.testing.assert_array_equal(resumed[i]["x"], run[4 + i]["x"])
    assert not np.array_equal(other_seed[0]["x"], run[0]["x"])


def test_digits_train_epoch_is_a_permutation_and_test_is_one_ordered_pass():
    config = make_config("digits")
    epoch = take(data.get_dataset(config, batch_size=100, split="train", seed=0), 15)
    seen = np.concatenate([b["x"] for b in epoch]).reshape(1500, -1)
    train = data.load_digits_split("train")[0].reshape(1500, -1)
    np.testing.assert_array_equal(np.unique(seen, axis=0), np.unique(train, axis=0))
    assert not np.array_equal(seen, train)  # shuffled
    test = list(data.get_dataset(config, batch_size=100, split="test", seed=0))
    assert [len(b["x"]) for b in test] == [100, 100, 97]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in test]),
                                  data.load_digits_split("test")[0])


def test_digits_dequantization_adds_uniform_noise_to_the_17_levels():
    kwargs = dict(batch_size=256, split="train", seed=0)
    x = take(data.get_dataset(make_config("digits", dequantize=True), **kwargs), 1)[0]["x"]
    x0 = take(data.get_dataset(make_config("digits"), **kwargs), 1)[0]["x"]
    assert x.min() >= -1.0 and x.max() < 1.0
    offset = (x + 1) / 2 * 17 - np.round((x0 + 1) / 2 * 16)  # u ~ U[0, 1) on the level
    assert offset.min() > -1e-4 and offset.max() < 1 + 1e-4
    assert abs(offset.mean() - 0.5) < 0.02


def test_get_dataset_errors():
    with pytest.raises(ValueError, match="not divisible by process_count"):
        data.get_dataset(make_config("moons"), batch_size=10, split="train", seed=0,
                         process_count=3)
    with pytest.raises(ValueError, match="valid splits"):
        data.get_dataset(make_config("digits"), batch_size=10, split="valid", seed=0)
    with pytest.raises(ValueError, match="only gmm"):
        data.get_dataset(make_config("moons", toy_dim=3), batch_size=10, split="train", seed=0)


def test_data_shape_num_levels_and_eval_data():
    assert data.data_shape(make_config("checkerboard")) == (2,)
    assert data.data_shape(make_config("gmm", toy_dim=5)) == (5,)
    assert data.data_shape(make_config("digits")) == (8, 8, 1)
    assert data.data_shape(make_config("cifar10")) == (32, 32, 3)
    assert data.data_shape(make_config("mnist", image_size=28, num_channels=1)) == (28, 28, 1)
    assert [data.num_levels(make_config(n)) for n in ("moons", "digits", "cifar10")] == [
        None, 17, 256]
    toys = data.eval_data(make_config("spiral"), "test", n=500)
    assert toys.shape == (500, 2)
    np.testing.assert_array_equal(toys, data.eval_data(make_config("spiral"), "test", n=500))
    assert not np.array_equal(toys, data.eval_data(make_config("spiral"), "train", n=500))
    assert data.eval_data(make_config("digits"), "test").shape == (297, 8, 8, 1)
    assert data.eval_data(make_config("digits"), "train", n=10).shape == (10, 8, 8, 1)


# ----------------------------------------------------------------------------- TFDS

TINY_SIZE = 10  # examples per split of the tiny on-disk dataset


def tiny_image(i):
    return np.random.default_rng(i).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    """A real, prepared, offline TFDS dataset 'tiny_images': label i has tiny_image(i)."""
    import tensorflow_datasets as tfds

    class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(6, 6, 3)),
                "label": tfds.features.ClassLabel(num_classes=2 * TINY_SIZE)})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0),
                    "test": self._generate_examples(TINY_SIZE)}

        def _generate_examples(self, offset):
            for i in range(offset, offset + TINY_SIZE):
                yield i, {"image": tiny_image(i), "label": i}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyImages(data_dir=data_dir).download_and_prepare()
    return data_dir


def tiny_batches(data_dir, k=None, **kwargs):
    ds = data.tfds_image_dataset("tiny_images", "train", data_dir=data_dir, **kwargs)
    return list((ds.take(k) if k else ds).as_numpy_iterator())


def test_tfds_processes_read_disjoint_complete_parts(tiny_data_dir):
    parts = [tiny_batches(tiny_data_dir, batch_size=3, process_index=i, process_count=2)
             for i in range(2)]
    labels = [np.concatenate([b["label"] for b in part]) for part in parts]
    assert not set(labels[0]) & set(labels[1])
    assert sorted(np.concatenate(labels)) == list(range(TINY_SIZE))
    for b in parts[0]:  # ordered, unflipped, not dequantized: the stored images exactly
        expected = np.stack([tiny_image(i) for i in b["label"]]) / 255 * 2 - 1
        np.testing.assert_allclose(b["image"], expected, atol=1e-6)


def test_tfds_stream_is_deterministic_and_resumes_exactly(tiny_data_dir):
    kwargs = dict(batch_size=4, shuffle=True, repeat=True, random_flip=True, dequantize=True,
                  seed=3)
    run = tiny_batches(tiny_data_dir, 6, **kwargs)  # 2.4 epochs: crosses epoch boundaries
    resumed = tiny_batches(tiny_data_dir, 3, start_step=3, **kwargs)
    for a, b in zip(run[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    labels = np.concatenate([b["label"] for b in run])
    assert sorted(labels[:TINY_SIZE]) == list(range(TINY_SIZE))  # epoch 0 is a permutation
    assert not np.array_equal(labels[:TINY_SIZE], labels[TINY_SIZE:2 * TINY_SIZE])


def test_get_dataset_and_eval_data_with_tfds(tiny_data_dir):
    config = make_config("tiny_images", image_size=6, data_dir=tiny_data_dir)
    batches = take(data.get_dataset(config, batch_size=4, split="train", seed=0,
                                    process_index=1, process_count=2), 3)
    assert [b["x"].shape for b in batches] == [(2, 6, 6, 3)] * 3
    assert data.eval_data(config, "test").shape == (TINY_SIZE, 6, 6, 3)
    assert data.eval_data(config, "test", n=4).shape == (4, 6, 6, 3)
    with pytest.raises(ValueError, match="num_channels"):
        data.get_dataset(make_config("tiny_images", image_size=6, num_channels=1,
                                     data_dir=tiny_data_dir),
                         batch_size=4, split="train", seed=0)


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_mock_pipeline_shapes_range_flip_dequantize(name, shape):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=8):
        def batches(**kwargs):
            ds = data.tfds_image_dataset(name, "train", batch_size=4, seed=1, **kwargs)
            return np.concatenate([b["image"] for b in ds.as_numpy_iterator()])

        plain, flipped, deq = batches(), batches(random_flip=True), batches(dequantize=True)
        resized = batches(image_size=16)
    assert plain.shape == (8, *shape) and plain.dtype == np.float32
    assert resized.shape == (8, 16, 16, shape[-1])
    for x in (plain, flipped, deq, resized):
        assert x.min() >= -1.0 and x.max() <= 1.0
    is_flipped = [np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain, strict=True)]
    is_same = [np.array_equal(f, p) for f, p in zip(flipped, plain, strict=True)]
    assert all(a or b for a, b in zip(is_flipped, is_same, strict=True)) and any(is_flipped)
    assert not all(is_flipped)
    levels = np.round((plain + 1) / 2 * 255)
    offset = (deq + 1) / 2 * 256 - levels  # u ~ U[0, 1) on top of the integer level
    assert offset.min() > -1e-3 and offset.max() < 1 + 1e-3 and offset.std() > 0.2


def test_tfds_missing_dataset_raises_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.tfds_image_dataset("cifar10", "train", batch_size=4, data_dir=str(tmp_path))
    message = str(info.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "download_and_prepare()" in message and "--config.data.data_dir" in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_tfds_unknown_name_lists_valid_names(tmp_path):
    config = make_config("no_such_dataset_xyz", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="valid names: checkerboard.*digits.*TFDS"):
        data.get_dataset(config, batch_size=4, split="train", seed=0)
