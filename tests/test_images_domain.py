"""Domain image metrics (modalities/images/domain.py, classifier.py): Fréchet distance against the closed form,
precision / recall against a brute-force reference and their limits, pixel diversity by hand, and the cached
per-data-set classifier (class agreement on real test images = its test accuracy; a second call trains nothing).

The classifier here trains on 300 images for 3 epochs (9 steps, about a CPU-second); the full Fashion-MNIST one runs
under ``-m slow``.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from unite_sci.config import build_config
from unite_sci_modalities.images import classifier as clf_mod
from unite_sci_modalities.images import domain
from unite_sci_modalities.images.adapter import ImageAdapter, ImageConfig, ImageSample
from unite_sci_modalities.images.data import FASHION_MNIST_DIR

needs_fashion = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
TINY_DATA = ["data.num_train=300", "data.num_val=8", "data.num_test=200", "data.nn_reference_count=32",
             "data.classifier_epochs=3"]


# ------------------------------------------------------------------------------------- Fréchet distance
def test_fd_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert domain.feature_fd(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_two_gaussians_matches_the_closed_form():
    # Covariances sharing eigenvectors Q (not diagonal): FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    a, b = np.array([4.0, 1.0, 0.25, 2.0]), np.array([1.0, 1.0, 1.0, 0.5])
    mu1, mu2 = np.array([1.0, 0.0, -1.0, 2.0]), np.array([0.0, 0.5, -1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 2.25 + 1.5 = 3.75
    x = rng.multivariate_normal(mu1, q @ np.diag(a) @ q.T, size=100_000)
    y = rng.multivariate_normal(mu2, q @ np.diag(b) @ q.T, size=100_000)
    assert domain.feature_fd(x, y) == pytest.approx(expected, rel=0.02)


# ----------------------------------------------------------------------------------- precision / recall
def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 written out with loops: a point is covered by a set when it lies within the
    distance from some member to that member's k-th nearest other member."""
    def radii(s):
        return [sorted(np.linalg.norm(s - p, axis=1))[k] for p in s]  # [0] is the point itself

    rr, fr = radii(real), radii(fake)
    precision = np.mean([any(np.linalg.norm(f - r) <= rad for r, rad in zip(real, rr)) for f in fake])
    recall = np.mean([any(np.linalg.norm(r - f) <= rad for f, rad in zip(fake, fr)) for r in real])
    return float(precision), float(recall)


def test_precision_recall_limits_and_brute_force():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(120, 5))
    assert domain.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert domain.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    fake = rng.normal(size=(90, 5)) * 0.5 + 0.7  # narrower and shifted: precision and recall strictly inside (0, 1)
    p, r = domain.precision_recall(real, fake, k=3, chunk=16)  # chunks smaller than the sets
    bp, br = _brute_force_pr(real, fake, 3)
    assert 0 < p < 1 and 0 < r < 1
    assert (p, r) == pytest.approx((bp, br), abs=1e-12)


# ------------------------------------------------------------------------------------------- diversity
def test_pixel_diversity_by_hand_and_padding_invariant():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(5, 1, 6, 6), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 1])
    x = images.reshape(5, -1) / 255.0
    pair = lambda i, j: np.sqrt(((x[i] - x[j]) ** 2).sum())  # noqa: E731
    expected = (pair(0, 1) + np.mean([pair(i, j) for i, j in itertools.combinations([2, 3, 4], 2)])) / 2
    assert domain.pixel_diversity(images, labels) == pytest.approx(expected, rel=1e-12)
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))  # zero borders, as 28 -> 32 px
    assert domain.pixel_diversity(padded, labels) == pytest.approx(expected, rel=1e-12)
    same = np.repeat(images[:1], 4, axis=0)
    assert domain.pixel_diversity(same, np.zeros(4, dtype=np.int64)) == 0.0  # a collapsed class
    assert domain.pixel_diversity(images[:2], np.array([0, 1])) is None  # no class with two images
    assert domain.metric_name("fashion_mnist") == "fd_fashion_mnist"


# ------------------------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An adapter whose classifier trains on 300 images for 1 epoch, cached in a fresh folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("UNITE_SCI_CACHE", str(tmp_path_factory.mktemp("cache")))
    cfg = build_config("images", ImageConfig, [], TINY_DATA)
    a = ImageAdapter(cfg.data)
    yield a
    mp.undo()


@needs_fashion
def test_class_agreement_on_real_test_images_is_the_test_accuracy(tiny):
    test = tiny.build_splits()["test"]
    real = tiny.batch_to_domain(tiny.collate([test[i] for i in range(len(test))]))
    m = tiny.evaluate(real)
    clf, reference = tiny.classifier()
    assert reference.shape == (300, clf.recipe.features)
    assert 0.2 < clf.test_accuracy < 1.0  # 10 classes: above chance (0.1) after 9 steps
    assert m["images/class_agreement"] == clf.test_accuracy == m["classifier_test_accuracy"]
    assert m["pr_k"] == 3 and m["pr_reference_images"] == 200 and m["domain_num_samples"] == 200
    assert tiny.quick_metrics(real)["images/pixel_diversity"] == m["images/pixel_diversity"]  # one definition
    # noise scores further from the data than real test images do, in every domain metric
    noise = [ImageSample(np.random.default_rng(i).integers(0, 256, (1, 32, 32), dtype=np.uint8), s.label)
             for i, s in enumerate(real)]
    n = tiny.evaluate(noise)
    assert n["images/fd_fashion_mnist"] > 10 * m["images/fd_fashion_mnist"]
    assert n["images/precision"] < m["images/precision"] and n["images/recall"] < m["images/recall"]


@needs_fashion
def test_classifier_is_cached_and_a_second_call_trains_nothing(tiny, monkeypatch):
    first, _ = tiny.classifier()
    assert first.path.is_file() and first.path.with_suffix(".features.npz").is_file()
    monkeypatch.setattr(clf_mod, "train_net", lambda *a, **k: pytest.fail("trained again"))
    fresh = ImageAdapter(tiny.cfg)  # a new adapter: nothing held in memory
    again, _ = fresh.classifier()
    assert again.test_accuracy == first.test_accuracy and again.description == first.description
    for (k, v), w in zip(first.net.state_dict().items(), again.net.state_dict().values()):
        assert (v == w).all(), k
    # another recipe is another cache entry
    other = clf_mod.classifier_path(first.name, clf_mod.Recipe(epochs=2))
    assert other != first.path and not other.exists()


@pytest.mark.slow
@needs_fashion
def test_full_fashion_mnist_classifier_accuracy():
    """The default classifier (55,000 training images, 2 epochs; about 1 CPU-minute, cached): ~90 % on the
    10,000 test images."""
    a = ImageAdapter(build_config("images", ImageConfig, [], []).data)
    clf, reference = a.classifier()
    assert clf.test_accuracy > 0.88 and reference.shape == (55000, 128)


@needs_fashion
def test_benchmark_real_data_row_scores_the_domain_metrics_at_the_sample_count(tiny):
    from unite_sci_benchmarks.images import gen_columns, real_data_row

    row = real_data_row(tiny, 50)
    clf, _ = tiny.classifier()
    test = tiny.build_splits()["test"]
    labels = test.labels[:50]
    images = tiny.stack(tiny.batch_to_domain(tiny.collate([test[i] for i in range(50)])))
    assert row["num_samples"] == 50 and row["method"] == "Data: 50 real test images"
    assert row["class_agreement"] == clf.accuracy(images, labels)  # the classifier on these 50 images
    assert row["metrics"]["pr_reference_images"] == 50  # precision / recall at equal counts
    assert row["fd_fashion_mnist"] > 0 and 0 < row["recall"] <= 1 and row["pixel_diversity"] > 0
    cols = gen_columns([row])
    assert cols[cols.index("num_samples") + 1] == "fd_fashion_mnist" and "gfid" in cols
