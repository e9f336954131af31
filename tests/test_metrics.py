"""Tests of ebm_vs_score.metrics: each metric against a direct computation, plus the
must-show properties (exact Fisher divergence, digits FD, missing Inception weights)."""

from __future__ import annotations

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from ebm_vs_score import data, sde
from ebm_vs_score.metrics import classifier, distances, inception, toy

# ----------------------------------------------------------------------------------------
# distances: Frechet distance
# ----------------------------------------------------------------------------------------


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _naive_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), by eigendecompositions."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1 = (x - mu1).T @ (x - mu1) / (len(x) - 1)
    s2 = (y - mu2).T @ (y - mu2) / (len(y) - 1)
    r1 = _psd_sqrt(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _psd_sqrt(r1 @ s2 @ r1)))


def test_frechet_distance_matches_naive_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6))
    y = 0.5 + rng.standard_normal((250, 6)) @ rng.standard_normal((6, 6))
    got = distances.frechet_distance(*distances.feature_statistics(x),
                                     *distances.feature_statistics(y))
    np.testing.assert_allclose(got, _naive_frechet(x, y), rtol=1e-8)


def test_frechet_distance_identical_stats_and_gaussian_closed_form():
    rng = np.random.default_rng(1)
    mu, sigma = distances.feature_statistics(rng.standard_normal((500, 10)))
    assert abs(distances.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    # singular covariances (fewer samples than dims): the eps fallback keeps it finite and ~0
    mu_s, sigma_s = distances.feature_statistics(rng.standard_normal((5, 20)))
    assert abs(distances.frechet_distance(mu_s, sigma_s, mu_s, sigma_s)) < 1e-4
    # features constant in some dimensions (an exactly singular product): no scipy warning
    # reaches the user, since the eps retry handles it, and the distance is that of the rest
    x, y = rng.standard_normal((50, 20)), rng.standard_normal((50, 20)) + 0.1
    x[:, :3] = y[:, :3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        got = distances.frechet_distance(*distances.feature_statistics(x),
                                         *distances.feature_statistics(y))
    want = distances.frechet_distance(*distances.feature_statistics(x[:, 3:]),
                                      *distances.feature_statistics(y[:, 3:]))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # diagonal Gaussians: sum_i (m1_i - m2_i)^2 + (s1_i - s2_i)^2
    m1, m2, s1, s2 = rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4), \
        rng.uniform(0.5, 2, 4)
    got = distances.frechet_distance(m1, np.diag(s1**2), m2, np.diag(s2**2))
    np.testing.assert_allclose(got, np.sum((m1 - m2) ** 2 + (s1 - s2) ** 2), rtol=1e-10)


# ----------------------------------------------------------------------------------------
# distances: MMD, sliced Wasserstein
# ----------------------------------------------------------------------------------------


def _explicit_mmd(x, y, bandwidths):
    k = lambda a, b: sum(np.exp(-np.sum((a - b) ** 2) / (2 * h**2)) for h in bandwidths)
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_explicit_kernel_sums():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((11, 3)), 0.7 + rng.standard_normal((9, 3))
    for bandwidths in ([0.5, 2.0], [1.3]):
        got = distances.mmd(x, y, bandwidths, block_size=4)  # several blocks
        np.testing.assert_allclose(got, _explicit_mmd(x, y, bandwidths), rtol=1e-10)
    pooled = np.concatenate([x, y])
    median = np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(pooled, 2)])
    np.testing.assert_allclose(distances.median_bandwidth(x, y), median, rtol=1e-10)
    np.testing.assert_allclose(distances.mmd(x, y), _explicit_mmd(x, y, [median]), rtol=1e-10)


def test_sliced_wasserstein_against_scipy_and_translation():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 1)), 2 + 0.5 * rng.standard_normal((27, 1))
    # in 1-D every direction is +-1, so SW_1 is scipy's exact W_1 (unequal sample sizes)
    got = distances.sliced_wasserstein(x, y, 0, num_projections=4, p=1)
    np.testing.assert_allclose(got, scipy.stats.wasserstein_distance(x[:, 0], y[:, 0]),
                               rtol=1e-10)
    # a translation by c: W_2 along theta is |theta . c|, so SW_2 -> |c| / sqrt(D)
    x, c = rng.standard_normal((64, 4)), np.array([1.0, -2.0, 0.5, 3.0])
    got = distances.sliced_wasserstein(x, x + c, jax.random.PRNGKey(0), num_projections=4000)
    np.testing.assert_allclose(got, np.linalg.norm(c) / 2, rtol=0.05)
    assert distances.sliced_wasserstein(x, x, 1) == 0.0


# ----------------------------------------------------------------------------------------
# distances: improved precision / recall, Inception score
# ----------------------------------------------------------------------------------------


def _brute_force_pr(real, fake, k):
    def radius(points, i):
        return sorted(np.linalg.norm(points[i] - q) for j, q in enumerate(points) if j != i)[k - 1]

    def inside(q, ref):
        return any(np.linalg.norm(q - ref[i]) <= radius(ref, i) for i in range(len(ref)))

    precision = np.mean([inside(q, real) for q in fake])
    recall = np.mean([inside(q, fake) for q in real])
    return precision, recall


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((13, 3)), 1.2 + rng.standard_normal((17, 3))
    got = distances.precision_recall(real, fake, k=k, block_size=5)
    np.testing.assert_allclose(got, _brute_force_pr(real, fake, k))
    assert 0 < got.precision < 1 and 0 < got.recall < 1  # a non-trivial case
    assert distances.precision_recall(real, real, k=k) == (1.0, 1.0)


def test_inception_score_limits_and_direct_formula():
    num_classes, splits = 7, 3
    uniform = np.zeros((42, num_classes))
    np.testing.assert_allclose(distances.inception_score(uniform, splits), (1.0, 0.0),
                               atol=1e-12)
    one_hot = 100.0 * np.eye(num_classes)[np.arange(42) % num_classes]  # each split balanced
    mean, std = distances.inception_score(one_hot, splits)
    np.testing.assert_allclose([mean, std], [num_classes, 0.0], atol=1e-9)
    logits = np.random.default_rng(5).standard_normal((60, 5)) * 2
    direct = []
    for part in np.split(logits, splits):
        p = scipy.special.softmax(part, axis=1)
        direct.append(np.exp(np.mean([scipy.stats.entropy(q, p.mean(0)) for q in p])))
    np.testing.assert_allclose(distances.inception_score(logits, splits),
                               (np.mean(direct), np.std(direct)), rtol=1e-10)


# ----------------------------------------------------------------------------------------
# toy: exact Fisher divergence and NLL
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("process", [sde.VPSDE(), sde.VESDE(sigma_max=5.0)],
                         ids=["vp", "ve"])
def test_fisher_divergence_zero_for_exact_score_and_grows(process):
    gmm = data.gmm(dim=2, num_components=4)
    x0 = jnp.asarray(data.sample_toy("gmm", 0, 512, dim=2, num_components=4))
    t_grid = jnp.array([0.01, 0.1, 0.5, 1.0])

    def exact(x, t):
        return gmm.noisy_score(x, process.alpha(t), process.marginal_std(t))

    unit = jnp.array([0.6, 0.8])  # a constant unit field: the divergence is exactly c^2
    rotation = lambda x: jnp.stack([-x[:, 1], x[:, 0]], axis=1)

    @jax.jit  # one compilation for every field below
    def divergence(c_unit, c_rotation):
        field = lambda x, t: exact(x, t) + c_unit * unit + c_rotation * rotation(x)
        return toy.fisher_divergence(field, gmm, x0, sde=process, key=jax.random.PRNGKey(1),
                                     t_grid=t_grid)

    np.testing.assert_allclose(divergence(0.0, 0.0), 0.0, atol=1e-12)  # s + 0 is s exactly
    previous = np.zeros(t_grid.shape)
    for c in (0.1, 0.5, 1.0):
        np.testing.assert_allclose(divergence(c, 0.0), c**2, rtol=1e-4)
        rotated = np.asarray(divergence(0.0, c))
        assert np.all(rotated > previous)
        previous = rotated


def test_exact_nll_and_report():
    gmm = data.gmm(dim=2, num_components=3)
    x = data.sample_toy("gmm", 2, 64, dim=2, num_components=3)
    true = -np.asarray(gmm.log_prob(x))
    np.testing.assert_allclose(toy.exact_nll(gmm, x), true, rtol=1e-6)
    report = toy.nll_report(-true - 0.25, gmm, x)  # a model 0.25 nats worse everywhere
    np.testing.assert_allclose([report.model_nll, report.true_nll, report.gap],
                               [true.mean() + 0.25, true.mean(), 0.25], rtol=1e-5)
    assert report.gap_stderr < 1e-5
    with pytest.raises(ValueError, match="one log-density per example"):
        toy.nll_report(np.zeros(3), gmm, x)


# ----------------------------------------------------------------------------------------
# classifier: offline feature network and FD on digits
# ----------------------------------------------------------------------------------------

TEST_STEPS = 200  # fast fixture; the default (1000 steps) is checked by a slow test


@pytest.fixture(scope="session")
def digits_classifier(tmp_path_factory):
    cache = tmp_path_factory.mktemp("classifier")
    train, labels = data.load_digits_split("train")
    test, test_labels = data.load_digits_split("test")
    clf = classifier.get_classifier(train, labels, cache, steps=TEST_STEPS, eval_images=test,
                                    eval_labels=test_labels)
    return clf, cache


def _stratified_halves(labels: np.ndarray) -> np.ndarray:
    """Boolean mask: within each class, alternate examples between the two halves."""
    order = np.argsort(labels, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(labels))
    return rank % 2 == 0


def test_classifier_accuracy_cache_and_per_example(digits_classifier, monkeypatch):
    clf, cache = digits_classifier
    assert clf.accuracy > 0.85 and clf.num_classes == 10
    assert (cache / classifier.PARAMS_FILE).is_file() and (cache / classifier.META_FILE).is_file()
    train, labels = data.load_digits_split("train")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(classifier, "train_classifier", no_training)
    again = classifier.get_classifier(train, labels, cache, steps=TEST_STEPS)
    jax.tree.map(np.testing.assert_array_equal, again.params, clf.params)
    with pytest.raises(AssertionError, match="cached"):  # other settings: no reuse
        classifier.get_classifier(train, labels, cache, steps=TEST_STEPS + 1)
    # GroupNorm is per example: features of one image do not depend on its batch
    feats_batch, _ = clf.apply(train[:20])
    feats_single, _ = clf.apply(train[3:4])
    np.testing.assert_allclose(feats_single[0], feats_batch[3], rtol=1e-5, atol=1e-6)


def test_frechet_distance_digits_halves_and_noise(digits_classifier):
    clf, _ = digits_classifier
    test, labels = data.load_digits_split("test")
    stats = lambda images: distances.feature_statistics(clf.apply(images)[0])
    half = _stratified_halves(labels)
    a, b = test[half], test[~half]
    stats_a, stats_test = stats(a), stats(test)
    rng = np.random.default_rng(0)
    noise_images = rng.uniform(-1, 1, test.shape).astype(np.float32)
    fd_noise = distances.frechet_distance(*stats_test, *stats(noise_images))
    fd_halves = distances.frechet_distance(*stats_a, *stats(b))
    assert 0 < fd_halves < 0.1 * fd_noise
    eps = rng.standard_normal(test.shape).astype(np.float32)
    levels = (0.0, 0.1, 0.3, 0.6)
    # Heusel et al. 2017 (Fig. 1): FD of the data to its noised version grows with the noise
    fd_noised = [distances.frechet_distance(*stats_test, *stats(test + s * eps)) for s in levels]
    assert abs(fd_noised[0]) < 1e-6 and np.all(np.diff(fd_noised) > 0)
    # half vs noised half: std 0.1 is below the resolution of 148 vs 149 samples (stays
    # within 25% of the clean FD), larger noise grows the distance above the clean value
    fd_half_noised = [distances.frechet_distance(*stats_a, *stats(b + s * eps[~half]))
                      for s in levels]
    assert abs(fd_half_noised[1] / fd_half_noised[0] - 1) < 0.25
    assert fd_half_noised[0] < fd_half_noised[2] < fd_half_noised[3]


@pytest.mark.slow
def test_digits_classifier_default_steps_is_accurate_and_deterministic(tmp_path):
    first = classifier.get_digits_classifier(tmp_path / "a")
    assert first.accuracy > 0.9
    second = classifier.get_digits_classifier(tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)


# ----------------------------------------------------------------------------------------
# inception: missing weights, file format, architecture
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, "/nonexistent/inception_fid.npz"])
def test_missing_inception_weights_message(path):
    with pytest.raises(FileNotFoundError) as info:
        inception.load_inception(path)
    message = str(info.value)
    assert "pt_inception-2015-12-05" in message and "TF-hub" in message
    assert "--config.eval.inception_weights=" in message and repr(path) in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")


def _random_state_dict(rng):
    """Random weights in the pytorch-fid format, scaled so activations stay O(1)."""
    named = {}
    for name, shape in inception.expected_weight_shapes().items():
        fan_in = np.prod(shape[1:]) if len(shape) > 1 else 1
        named[name] = (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        if name.endswith("running_var"):
            named[name] = np.abs(named[name]) + 0.5
    return named


def test_inception_weights_format(tmp_path):
    shapes = inception.expected_weight_shapes()
    assert len(shapes) == 94 * 5 + 2 and shapes["fc.weight"] == (1008, 2048)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    named = _random_state_dict(np.random.default_rng(6))
    path = tmp_path / "inception_fid.npz"
    np.savez(path, **named, **{"Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0)})
    net = inception.load_inception(path)
    conv = net.params["Mixed_6b"]["branch7x7_2"]["conv"]
    p = "Mixed_6b.branch7x7_2"
    scale = named[f"{p}.bn.weight"] / np.sqrt(named[f"{p}.bn.running_var"] + inception.BN_EPS)
    np.testing.assert_allclose(conv["kernel"],
                               named[f"{p}.conv.weight"].transpose(2, 3, 1, 0) * scale, rtol=1e-5)
    np.testing.assert_allclose(conv["bias"], named[f"{p}.bn.bias"]
                               - named[f"{p}.bn.running_mean"] * scale, rtol=1e-5, atol=1e-6)
    del named["Mixed_5b.branch_pool.conv.weight"]
    np.savez(path, **named)
    with pytest.raises(ValueError, match="1 missing arrays"):
        inception.load_inception(path)


def _keras_to_state_dict(model, prefixes, rng):
    """pytorch-fid names for a keras InceptionV3 (layers matched in creation order), with
    random BatchNorm statistics set in both."""
    import keras

    def order(layer, base):
        rest = layer.name[len(base):]
        return int(rest[1:]) if rest else 0

    convs = sorted((lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D)),
                   key=lambda lay: order(lay, "conv2d"))
    bns = sorted((lay for lay in model.layers
                  if isinstance(lay, keras.layers.BatchNormalization)),
                 key=lambda lay: order(lay, "batch_normalization"))
    named = {}
    for prefix, conv, bn in zip(prefixes, convs, bns, strict=True):
        kernel = conv.get_weights()[0]
        out = kernel.shape[-1]
        beta, mean = rng.normal(0, 0.1, (2, out)).astype(np.float32)
        var = rng.uniform(0.5, 1.5, out).astype(np.float32)
        bn.set_weights([beta, mean, var])  # keras: scale=False, eps=1e-3
        named.update({f"{prefix}.conv.weight": kernel.transpose(3, 2, 0, 1),
                      f"{prefix}.bn.weight": np.ones(out, np.float32),
                      f"{prefix}.bn.bias": beta, f"{prefix}.bn.running_mean": mean,
                      f"{prefix}.bn.running_var": var})
    return named


@pytest.mark.slow
def test_inception_architecture_matches_keras_inception_v3():
    """The Flax port, with Mixed_7c's pool switched to 'avg', equals keras' InceptionV3 on
    random weights (keras matches the FID graph except for that max pool)."""
    keras = pytest.importorskip("keras")
    import flax.linen as nn

    model = inception.InceptionV3(mixed_7c_pool="avg")
    prefixes = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, inception.BasicConv) and context.method_name == "__call__":
            prefixes.append(".".join(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))))
    reference = keras.applications.InceptionV3(include_top=False, weights=None,
                                               input_shape=(75, 75, 3), pooling="avg")
    rng = np.random.default_rng(7)
    named = _keras_to_state_dict(reference, prefixes, rng)
    named["fc.weight"] = rng.normal(0, 0.01, (1008, 2048)).astype(np.float32)
    named["fc.bias"] = rng.normal(0, 0.01, 1008).astype(np.float32)
    params = inception.params_from_state_dict(named)
    x = rng.uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    pool3, logits = jax.jit(model.apply)({"params": params}, x)
    expected = np.asarray(reference(x))
    np.testing.assert_allclose(pool3, expected, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(logits, expected @ named["fc.weight"].T + named["fc.bias"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inception_outputs_shapes(tmp_path):
    path = tmp_path / "inception_fid.npz"
    np.savez(path, **_random_state_dict(np.random.default_rng(8)))
    net = inception.load_inception(path)
    images = np.random.default_rng(9).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    out = net.apply(images, batch_size=2)
    assert out.pool3.shape == (3, 2048) and out.logits.shape == (3, 1008)
    assert np.all(np.isfinite(out.pool3)) and np.all(out.pool3 >= 0)  # mean of ReLUs
    np.testing.assert_allclose(out.logits - out.logits_unbiased,
                               np.broadcast_to(net.params["fc"]["bias"], (3, 1008)),
                               atol=1e-6 * np.abs(out.logits).max())
