"""Image metrics that say when they cannot be trusted and give the same answer twice (issue 34, item 5):
the shipped Fashion-MNIST feature network (modalities/images/feature_net.py: hash-checked, never retrained),
the fd bootstrap interval (domain.fd_interval) and the benchmark's best row (benchmarks/images.mark_best),
the near-chance warning of a classifier trained on a user's folder, and the collapse check of quick_metrics.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from unite_sci.config import build_config
from unite_sci.errors import DataError
from unite_sci_modalities.images import classifier as clf_mod
from unite_sci_modalities.images import domain, feature_net
from unite_sci_modalities.images.adapter import ImageAdapter, ImageConfig, ImageSample
from unite_sci_modalities.images.data import FASHION_MNIST_DIR

needs_fashion = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")


def _adapter(*data: str) -> ImageAdapter:
    return ImageAdapter(build_config("images", ImageConfig, [], list(data)).data)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITE_SCI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(clf_mod, "train_net", lambda *a, **k: pytest.fail("a shipped data set trained a classifier"))


def _test_samples(adapter: ImageAdapter, num: int) -> list[ImageSample]:
    test = adapter.build_splits()["test"]
    return adapter.batch_to_domain(adapter.collate([test[i] for i in range(num)]))


# ------------------------------------------------------------------------------------ shipped feature network
def test_the_shipped_file_is_small_and_matches_its_pin():
    net, meta = feature_net.load()
    assert feature_net.PATH.stat().st_size < 400_000 and meta["weights_dtype"] == "float16"
    assert meta["num_train"] == 55_000 and meta["num_test"] == 10_000 and meta["test_accuracy"] > 0.88
    assert sum(p.numel() for p in net.parameters()) == 155_898  # 3 conv blocks, 1024 -> 128 -> 10


@needs_fashion
def test_fashion_mnist_uses_the_shipped_network_whatever_the_training_subset(cache, no_training):
    a = _adapter("data.num_train=500", "data.num_test=2000", "data.split_seed=3")
    clf, reference = a.classifier()
    assert clf.path == feature_net.PATH and feature_net.SHA256[:12] in clf.description
    assert reference.shape == (500, 128)  # the adapter's own training images, scored by the shipped net
    assert clf.test_accuracy > 0.85 and clf.chance == pytest.approx(0.1, abs=0.02) and not clf.near_chance
    assert not any(cache.rglob("*smallcnn*.pt"))  # nothing trained or copied per machine
    # the shipped network's features of its own training split are cached too, never beside the shipped file
    train = a.build_splits()["train"]
    clf_mod.reference_features(clf, train, name=clf.name)
    assert [p.name for p in feature_net.PATH.parent.iterdir()] == [feature_net.PATH.name]
    assert len(list(cache.rglob("*.features.npz"))) == 2
    assert not feature_net.applies(a.cfg.__class__(classifier_epochs=3), 1)  # another recipe trains its own


@needs_fashion
def test_the_same_samples_give_the_same_fd_after_deleting_every_cache(cache, no_training):
    data = ("data.num_train=2000", "data.num_test=300", "data.nn_reference_count=64")
    rng = np.random.default_rng(0)
    samples = [ImageSample(np.clip(s.image.astype(int) + rng.integers(-40, 41, s.image.shape), 0, 255)
                           .astype(np.uint8), s.label) for s in _test_samples(_adapter(*data), 300)]
    first = _adapter(*data).evaluate(samples)
    shutil.rmtree(cache)
    again = _adapter(*data).evaluate(samples)
    assert first["images/fd_fashion_mnist"] == again["images/fd_fashion_mnist"] > 0
    assert first["fd_fashion_mnist_ci95"] == again["fd_fashion_mnist_ci95"]
    lo, hi = first["fd_fashion_mnist_ci95"]
    assert lo < first["images/fd_fashion_mnist"] < hi


@needs_fashion
@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_shipped_file_fails_in_one_line_naming_it(tmp_path, cache, monkeypatch, damage):
    bad = tmp_path / "fashion_mnist-smallcnn.pt"
    if damage == "flip":
        raw = bytearray(feature_net.PATH.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        bad.write_bytes(bytes(raw))
    monkeypatch.setattr(feature_net, "PATH", bad)
    with pytest.raises(DataError) as err:
        _adapter("data.num_train=50", "data.num_test=50").classifier()
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and feature_net.COMMAND in message


# ---------------------------------------------------------------------------------------- fd intervals
def _features(n: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)) + shift


def test_fd_interval_is_seeded_covers_the_value_and_narrows_with_more_samples():
    ref = _features(4000, seed=1)
    small, large = _features(200, 0.3, seed=2), _features(2000, 0.3, seed=3)
    a = domain.fd_interval(ref, small, seed=0)
    assert a == domain.fd_interval(ref, small, seed=0) != domain.fd_interval(ref, small, seed=1)
    assert a[0] < domain.feature_fd(ref, small) < a[1]
    b = domain.fd_interval(ref, large)
    assert b[1] - b[0] < (a[1] - a[0]) / 2  # ~1/sqrt(10) as wide


def test_rows_rank_on_fd_only_where_intervals_separate():
    from unite_sci_benchmarks.images import mark_best, scores

    ref = _features(4000, seed=1)

    def row(shift: float, seed: int) -> dict:
        feats = _features(500, shift, seed)
        gen = {"num_samples": 500, "images/fd_x": domain.feature_fd(ref, feats),
               "fd_x_ci95": list(domain.fd_interval(ref, feats))}
        return {"method": f"shift {shift}", **scores(gen), "best": ""}

    near = [row(0.30, 4), row(0.31, 5)]  # the same distribution: their fds differ by noise only
    assert mark_best(near, "fd_x") is None and [r["best"] for r in near] == ["tied", "tied"]
    far = [row(0.3, 6), row(1.0, 7), row(0.31, 8)]
    assert mark_best(far, "fd_x") is None and far[1]["best"] == ""  # the far row is not tied, yet no winner
    apart = [row(0.2, 9), row(1.0, 10)]
    assert mark_best(apart, "fd_x") is apart[0] and apart[0]["best"] == "best"
    assert apart[0]["fd_x_ci95"].count("-") == 1  # "lo-hi" in the table
    assert domain.intervals_separate((1, 2), (3, 4)) and not domain.intervals_separate((1, 3), (2, 4))
    assert not domain.intervals_separate(None, (1, 2))


# --------------------------------------------------------------------------- a user's folder: near chance
def _folder(root, learnable: bool, per_class: int = 150) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["ant", "bee", "cat"]):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            base = 40 + 80 * c if learnable else 128  # noise only: the label says nothing about the picture
            pixels = np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")


@pytest.mark.parametrize("learnable", [False, True])
def test_a_classifier_near_chance_on_a_users_folder_is_named_in_a_warning(tmp_path, cache, capsys, learnable):
    _folder(tmp_path / "pics", learnable)
    a = _adapter("data.dataset=folder", f"data.data_dir={tmp_path / 'pics'}", "data.num_classes=3",
                 "data.classifier_epochs=3")
    clf, _ = a.classifier()
    err = capsys.readouterr().err
    assert f"{clf.test_accuracy:.1%} of 45 test images correctly (chance {clf.chance:.1%})" in err  # always printed
    assert clf.chance >= 1 / 3  # the most common class of a random 45-image holdout
    warned = [line for line in err.splitlines() if line.startswith("warning: feature classifier near chance")]
    assert clf.summary()["classifier_near_chance"] is (not learnable)
    assert len(warned) == (0 if learnable else 1)
    if not learnable:
        assert "pics" in warned[0] and f"{clf.test_accuracy:.1%}" in warned[0]


def test_near_chance_rule():
    assert clf_mod.near_chance(0.40, 1 / 3) and not clf_mod.near_chance(0.60, 1 / 3)
    assert not clf_mod.near_chance(0.90, 0.1) and clf_mod.near_chance(0.25, 0.1)
    assert clf_mod.chance_accuracy(np.array([0, 0, 0, 1])) == 0.75


# ------------------------------------------------------------------------------- collapse in quick_metrics
@needs_fashion
def test_quick_metrics_warn_when_the_samples_collapse(cache, capsys):
    a = _adapter("data.num_train=200", "data.num_test=60", "data.nn_reference_count=32")
    real = _test_samples(a, 60)
    healthy = a.quick_metrics(real)
    assert healthy["images/spread_ratio"] == pytest.approx(1.0) and healthy["images/duplicate_share"] == 0.0
    assert "collapsed" not in capsys.readouterr().err
    one_per_class = [ImageSample(real[i % 10].image.copy(), real[i % 10].label) for i in range(60)]
    m = a.quick_metrics(one_per_class)
    assert m["images/duplicate_share"] == 1.0
    err = capsys.readouterr().err
    assert err.count("warning: 60 generated images collapsed") == 1


@needs_fashion
def test_evaluate_reports_and_warns_when_the_samples_collapse(cache, capsys):
    """A benchmark scores with ``evaluate``: a collapsed model's numbers come with the same one-line warning."""
    a = _adapter("data.num_train=200", "data.num_test=60", "data.nn_reference_count=32")  # domain metrics on
    real = _test_samples(a, 60)
    healthy = a.evaluate(real)
    assert healthy["images/spread_ratio"] == pytest.approx(1.0) and healthy["images/duplicate_share"] == 0.0
    assert "collapsed" not in capsys.readouterr().err
    one_image = [ImageSample(real[0].image.copy(), real[0].label) for _ in range(60)]
    m = a.evaluate(one_image)
    assert m["images/spread_ratio"] < 0.01 and m["images/duplicate_share"] == 1.0
    assert capsys.readouterr().err.count("warning: 60 generated images collapsed") == 1
