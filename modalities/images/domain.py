"""Domain metrics of generated images, in the feature space of a per-data-set classifier (``classifier.py``).

- ``fd_<set>``: Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of the whole training split (``fid.frechet_distance``). Not FID: another network, another scale.
- ``precision`` / ``recall`` (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing
  generative models"): each set's manifold is the union of balls around its points with radius the distance to
  the k-th nearest neighbour within the set (k = 3 by default). Precision = share of samples inside the real
  manifold; recall = share of real points inside the samples' manifold. As in the paper both sets have the same
  size: the real set is a seeded subset of the training features as large as the sample set.
- ``class_agreement``: share of labelled samples that the classifier assigns to the requested class; on real
  test images with their labels it is the classifier's test accuracy.
- ``pixel_diversity``: per class, the mean pairwise L2 distance between images with pixels in [0, 1]
  (sqrt of the sum of squared differences over all C x H x W pixels), averaged over classes with >= 2 images.
  Zero borders add nothing, so 28-px images padded to 32 score as the 28-px originals; a class collapsed to one
  image scores 0.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from .classifier import Classifier
from .fid import FeatureStats, frechet_distance

PR_K = 3


def metric_name(dataset: str) -> str:
    """``fd_<set>``: the Fréchet distance named after the data set whose classifier gives the features."""
    return "fd_" + (re.sub(r"[^0-9a-z]+", "_", dataset.lower()).strip("_") or "data")


def knn_radii(x: torch.Tensor, k: int = PR_K, chunk: int = 2048) -> torch.Tensor:
    """(N, D) -> (N,) distance from each point to its k-th nearest other point of the set (N > k)."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k = {k} points, got {len(x)}")
    out = [torch.cdist(x[lo:lo + chunk], x).topk(k + 1, dim=1, largest=False).values[:, k]
           for lo in range(0, len(x), chunk)]  # column 0 is the point itself (distance 0)
    return torch.cat(out)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K, chunk: int = 2048) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 precision and recall of ``fake`` (N, D) against ``real`` (M, D) features.

    A point lies in a set's manifold when it is within the k-NN radius of at least one of the set's points
    (a ball's boundary counts as inside, so a set against itself scores exactly 1 and 1).
    """
    r, f = torch.as_tensor(real, dtype=torch.float32), torch.as_tensor(fake, dtype=torch.float32)
    r_rad, f_rad = knn_radii(r, k, chunk), knn_radii(f, k, chunk)
    in_real = torch.zeros(len(f), dtype=torch.bool)
    in_fake = torch.zeros(len(r), dtype=torch.bool)
    for lo in range(0, len(f), chunk):
        d = torch.cdist(f[lo:lo + chunk], r)  # (n, M)
        in_real[lo:lo + chunk] = (d <= r_rad[None]).any(1)
        in_fake |= (d <= f_rad[lo:lo + chunk, None]).any(0)
    return float(in_real.double().mean()), float(in_fake.double().mean())


def pixel_diversity(images: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean within-class pairwise L2 distance of uint8 images (N, C, H, W) in [0, 1] pixel units (see module
    docstring); None when no class has two images."""
    x = torch.from_numpy(np.ascontiguousarray(images)).flatten(1).double() / 255.0  # (N, D)
    per_class = []
    for c in np.unique(labels):
        xc = x[torch.from_numpy(labels == c)]
        if len(xc) < 2:
            continue
        d = torch.cdist(xc, xc)  # (n, n), zero diagonal
        per_class.append(float(d.sum() / (len(xc) * (len(xc) - 1))))
    return float(np.mean(per_class)) if per_class else None


def feature_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features (N, D) and (M, D) (mean, unbiased covariance)."""
    fa, fb = (FeatureStats.from_features(np.asarray(x, dtype=np.float64), extractor="") for x in (a, b))
    return frechet_distance(fa, fb)


FD_RESAMPLES = 200  # bootstrap resamples behind every fd interval (about 1 s for 2,000 samples, 128 features)
FD_LEVEL = 0.95


def fd_interval(reference: np.ndarray, features: np.ndarray, resamples: int = FD_RESAMPLES,
                level: float = FD_LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``feature_fd(reference, features)`` over the samples.

    ``features`` (N, D) are resampled with replacement ``resamples`` times (``np.random.default_rng(seed)``);
    the reference (M, D) stays fixed: it is the data set, the samples are the draw that varies between runs.
    Two rows whose intervals overlap are not ranked by fd. The reference's covariance root is computed once.

    Resampling with replacement repeats samples, and a repeated sample raises an fd (the Fréchet distance of a
    finite sample is biased upwards): the resampled values sit about one interval-width above the estimate.
    The interval therefore takes its spread from the bootstrap and its centre from the estimate:
    ``fd + (q - median)`` for the two tail quantiles ``q`` of the resampled values.
    """
    feats = np.asarray(features, dtype=np.float64)
    ref = FeatureStats.from_features(np.asarray(reference, dtype=np.float64), extractor="")
    w, v = np.linalg.eigh(ref.sigma)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S_ref^(1/2)
    base = np.trace(ref.sigma)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        x = feats[rng.integers(0, len(feats), len(feats))]
        mu, sigma = x.mean(0), np.cov(x, rowvar=False)
        tr_root = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma @ root), 0.0, None)).sum()
        diff = ref.mu - mu
        values[i] = max(float(diff @ diff + base + np.trace(sigma) - 2.0 * tr_root), 0.0)
    tail = (1.0 - level) / 2 * 100
    lo, mid, hi = np.percentile(values, [tail, 50, 100 - tail])
    fd = feature_fd(reference, feats)
    return max(fd + lo - mid, 0.0), fd + hi - mid


def intervals_separate(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two (lo, hi) intervals do not overlap; False when either is missing."""
    return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])


def score(images: np.ndarray, labels: np.ndarray, clf: Classifier, reference: np.ndarray, dataset: str,
          k: int = PR_K, seed: int = 0) -> dict[str, Any]:
    """All domain metrics of uint8 images (N, C, H, W) with requested labels (N,) (negative: unknown).

    ``reference``: classifier features (M, F) of the whole training split. Keys ``images/<metric>`` plus
    what they were computed from (counts, k, the classifier and its test accuracy).
    """
    feats, pred = clf.embed(images)
    name = metric_name(dataset)
    out: dict[str, Any] = {f"images/{name}": None, "images/precision": None, "images/recall": None,
                           "images/class_agreement": None, "images/pixel_diversity": None}
    if len(images) >= 2:
        out[f"images/{name}"] = feature_fd(reference, feats)
        out[f"{name}_ci95"] = list(fd_interval(reference, feats, seed=seed))
        out["fd_interval"] = (f"{FD_LEVEL:.0%} bootstrap over the samples ({FD_RESAMPLES} resamples, seed {seed}), "
                              "spread of the resampled fds centred on the estimate; rows whose intervals overlap "
                              "are not ranked by fd")
    n_ref = min(len(images), len(reference))
    if n_ref > k:
        pick = np.sort(np.random.default_rng(seed).permutation(len(reference))[:n_ref])
        out["images/precision"], out["images/recall"] = precision_recall(reference[pick], feats, k)
    known = labels >= 0
    if known.any():
        out["images/class_agreement"] = float((pred[known] == labels[known]).mean())
    out["images/pixel_diversity"] = pixel_diversity(images[known], labels[known])
    out.update({"domain_num_samples": len(images), "domain_labelled_samples": int(known.sum()),
                f"{name}_reference_images": len(reference), "pr_k": k, "pr_reference_images": n_ref,
                "pixel_diversity_unit": "mean within-class pairwise L2 distance, pixels in [0, 1]",
                **clf.summary()})
    return out
