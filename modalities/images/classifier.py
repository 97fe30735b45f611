"""A small CNN classifier per image data set: the feature space of the image modality's domain metrics.

Inception runs at a few images per second on these CPUs, so its FID cannot score thousands of samples per run
(see ``fid.py``). Instead each data set gets its own classifier. Fashion-MNIST's ships with the package
(``feature_net.py``: the same network on every machine); any other data set's is trained once on its training
split (seeded, a couple of minutes on one thread) and cached under the toolkit's cache root, keyed by the exact
training images (``ImageAdapter.data_name``) and the recipe, and its test accuracy is printed, with a warning
when it is near chance (:func:`report_accuracy`). Its penultimate layer (``Recipe.features``
wide, 128 by default) gives the Fréchet distance and the precision / recall of ``domain.py``; its arg-max
gives the class agreement of class-conditional samples. Its test accuracy travels with every score: a
feature space is only as good as the classifier behind it.

Network (images at the adapter's size, (C, H, W) in [0, 1]): three blocks of 3x3 conv -> BatchNorm -> ReLU ->
2x2 max-pool (``Recipe.widths`` channels), an adaptive average pool to 4 x 4 (any image size fits), then
Linear -> ReLU (the features) and Linear -> logits. AdamW with a cosine decay, cross-entropy, no augmentation.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from unite_sci.errors import DataError
from unite_sci.files import atomic_write, file_hash

from .weights import cache_root

FORMAT = "unite-sci-image-classifier/1"


@dataclass(frozen=True)
class Recipe:
    """How the classifier is trained; every field is part of its cache key."""

    widths: tuple[int, int, int] = (16, 32, 64)  # conv channels of the three blocks
    features: int = 128                          # width of the penultimate layer (the feature space)
    epochs: int = 2
    batch_size: int = 128
    lr: float = 2e-3                             # AdamW peak, cosine decay to 0 over all steps
    weight_decay: float = 1e-4
    seed: int = 0

    def key(self) -> str:
        """10 hex digits naming the recipe in cache file names."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


class SmallCNN(nn.Module):
    """``(N, C, H, W)`` in [0, 1] -> logits ``(N, classes)``; :meth:`features` -> ``(N, recipe.features)``."""

    def __init__(self, channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64), features: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip([channels, *widths[:-1]], widths):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(widths[-1] * 16, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(x * 2 - 1))  # (N, F), post-ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, classes)


def as_arrays(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """An ``(image in [0, 1], label)`` data set -> images (N, C, H, W) uint8 and labels (N,) int64.

    The adapter's splits hold uint8 pixels brought to size by padding or resizing; rounding back to uint8
    loses nothing for padded images and is how samples are stored anyway (``samples.npz``).
    """
    items = [data[i] for i in range(len(data))]
    if not items:
        raise DataError(f"{getattr(data, 'name', 'data set')}: no images to train or score the classifier on")
    images = torch.stack([im for im, _ in items])  # (N, C, H, W) float
    return (np.round(images.clamp(0, 1).numpy() * 255).astype(np.uint8),
            np.array([y for _, y in items], dtype=np.int64))


@dataclass
class Classifier:
    """A trained :class:`SmallCNN` with what it was trained on and how well it classifies the test split."""

    net: SmallCNN
    recipe: Recipe
    name: str                      # the training images (ImageAdapter.data_name("train"))
    path: Path                     # its cache file
    test_accuracy: float           # share of the test split classified correctly
    test_name: str                 # which test images that accuracy is measured on
    meta: dict[str, Any] = field(default_factory=dict)  # train seconds, image counts, torch version
    chance: float | None = None    # accuracy of always guessing the test split's most common class
    shipped: bool = False          # a file of the package (feature_net.py): nothing is ever written beside it

    @property
    def description(self) -> str:
        """Names the feature space: statistics from different classifiers must never be compared."""
        return f"SmallCNN {self.recipe.key()} on {self.name} sha256:{file_hash(self.path)[:12]}"

    @torch.inference_mode()
    def embed(self, images: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, C, H, W) -> features (N, F) float64 and predicted classes (N,) int64."""
        self.net.eval()
        feats, preds = [], []
        for lo in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[lo:lo + batch_size])).float() / 255.0
            f = self.net.features(x)
            feats.append(f.double().numpy())
            preds.append(self.net.head(f).argmax(1).numpy())
        if not feats:
            return np.zeros((0, self.recipe.features)), np.zeros(0, dtype=np.int64)
        return np.concatenate(feats), np.concatenate(preds)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Share of ``images`` classified as ``labels``."""
        return float((self.embed(images)[1] == labels).mean())

    def summary(self) -> dict[str, Any]:
        """What a metrics file records about the feature space."""
        return {"classifier": self.description, "classifier_test_accuracy": round(self.test_accuracy, 4),
                "classifier_test_images": self.test_name, "classifier_recipe": asdict(self.recipe),
                "classifier_train_s": self.meta.get("train_s"), "classifier_train_cpu_s": self.meta.get("train_cpu_s"),
                "classifier_train_images": self.meta.get("num_train"),
                "classifier_chance_accuracy": None if self.chance is None else round(self.chance, 4),
                "classifier_near_chance": self.near_chance}

    @property
    def near_chance(self) -> bool | None:
        """Whether the test accuracy is within :data:`NEAR_CHANCE_MARGIN` of chance (None: chance unknown)."""
        return None if self.chance is None else near_chance(self.test_accuracy, self.chance)


# A classifier must close at least a quarter of the gap between chance and perfect before its features are
# trusted: 40 % on three balanced classes (chance 33 %) fails, ~90 % on Fashion-MNIST (chance 10 %) passes.
NEAR_CHANCE_MARGIN = 0.25


def chance_accuracy(labels: np.ndarray) -> float:
    """Share of the most common class in ``labels`` (N,): the accuracy of a classifier that learned nothing."""
    return float(np.bincount(np.asarray(labels, dtype=np.int64)).max() / len(labels)) if len(labels) else 1.0


def near_chance(accuracy: float, chance: float, margin: float = NEAR_CHANCE_MARGIN) -> bool:
    """``accuracy < chance + margin * (1 - chance)``."""
    return accuracy < chance + margin * (1.0 - chance)


def report_accuracy(clf: Classifier, test_labels: np.ndarray, data: str) -> None:
    """Print the test accuracy of a classifier trained on this machine (a user's own data), and warn in one
    line when it is near chance: fd, precision / recall and class agreement in its features then measure the
    classifier, not the samples. Sets ``clf.chance``."""
    clf.chance = chance_accuracy(test_labels)
    print(f"note: the image metrics' feature classifier ({clf.recipe.epochs} epochs on {data}) classifies "
          f"{clf.test_accuracy:.1%} of {len(test_labels):,} test images correctly (chance {clf.chance:.1%})",
          file=sys.stderr, flush=True)
    if clf.near_chance:
        print(f"warning: feature classifier near chance on {data}: test accuracy {clf.test_accuracy:.1%}, chance "
              f"{clf.chance:.1%}; fd, precision, recall and class agreement cannot be trusted (more images per "
              f"class, or more data.classifier_epochs)", file=sys.stderr, flush=True)


def train_net(images: np.ndarray, labels: np.ndarray, num_classes: int, recipe: Recipe,
              progress: bool = True) -> SmallCNN:
    """Train a :class:`SmallCNN` on uint8 images (N, C, H, W) with labels (N,); the same seed gives the same
    network (its own generator for the initialisation and the batch order; the global RNG is untouched)."""
    from tqdm import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = SmallCNN(images.shape[1], num_classes, recipe.widths, recipe.features)
    gen = torch.Generator().manual_seed(recipe.seed)
    per_epoch = -(-len(images) // recipe.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * per_epoch)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    net.train()
    bar = tqdm(total=recipe.epochs * per_epoch, desc="classifier", unit="step", disable=not progress, leave=False)
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(images), generator=gen).split(recipe.batch_size):
            loss = F.cross_entropy(net(x_all[idx].float() / 255.0), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return net.eval()


def classifier_path(name: str, recipe: Recipe, cache_dir: str | Path | None = None) -> Path:
    """Cache file of the classifier trained on ``name`` (the training images) with ``recipe``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return Path(cache_dir or cache_root() / "classifiers") / f"{safe}-{recipe.key()}.pt"


def _load(path: Path, channels: int, num_classes: int, recipe: Recipe) -> tuple[SmallCNN, dict] | None:
    """The cached network and its metadata, or None when the file is absent, damaged or from another recipe."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(state["meta"])
        net = SmallCNN(channels, num_classes, recipe.widths, recipe.features)
        net.load_state_dict(state["weights"])
    except Exception:  # damaged, foreign or stale: rebuilt below, never fatal
        return None
    if state.get("format") != FORMAT or meta.get("recipe") != json.loads(json.dumps(asdict(recipe))):
        return None
    return net.eval(), meta


def load_or_train(name: str, train: Dataset, test: Dataset, test_name: str, num_classes: int,
                  recipe: Recipe = Recipe(), cache_dir: str | Path | None = None, progress: bool = True) -> Classifier:
    """The classifier for training images ``name``: loaded from the cache, else trained once and cached.

    ``train`` / ``test``: data sets of ``(image (C, H, W) in [0, 1], label)``. The test accuracy is stored with
    the test split's name and recomputed (inference only, seconds) when asked about another test split.
    """
    path = classifier_path(name, recipe, cache_dir)
    found = _load(path, train[0][0].shape[0], num_classes, recipe) if len(train) else None
    if found is not None:
        net, meta = found
        clf = Classifier(net, recipe, name, path, float("nan"), test_name, meta)
        same = meta.get("test_name") == test_name
        clf.test_accuracy = float(meta["test_accuracy"]) if same else clf.accuracy(*as_arrays(test))
        return clf
    images, labels = as_arrays(train)
    # 32-px gray images: about 1,700 training images per CPU-second on one thread (measured), fewer when shared
    minutes = len(images) * recipe.epochs * images[0].size / 1024 / 1700 / 60
    print(f"note: training the CNN classifier behind the image metrics (fd, precision/recall, class "
          f"agreement) once, on {len(images):,} training images for {recipe.epochs} epoch(s): about "
          f"{max(minutes, 0.1):.1f} CPU-minutes on one thread; cached in {path}", file=sys.stderr, flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    net = train_net(images, labels, num_classes, recipe, progress)
    meta = {"recipe": asdict(recipe), "train_s": round(time.perf_counter() - start, 1),
            "train_cpu_s": round(time.process_time() - cpu, 1), "threads": torch.get_num_threads(),
            "num_train": len(images), "torch": torch.__version__, "name": name, "test_name": test_name}
    clf = Classifier(net, recipe, name, path, float("nan"), test_name, meta)
    clf.test_accuracy = meta["test_accuracy"] = clf.accuracy(*as_arrays(test))
    state = {"format": FORMAT, "weights": net.state_dict(), "meta": json.dumps(meta)}
    atomic_write(path, lambda f: torch.save(state, f), binary=True)
    return clf


def reference_features(clf: Classifier, train: Dataset, cache_dir: str | Path | None = None,
                       name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) float32 and labels (N,) of a training split, cached and tied to the classifier file's
    hash (a retrained classifier never reads stale features).

    ``name``: the split's images (``ImageAdapter.data_name``) when they are not the classifier's own training
    images (the shipped network scores any Fashion-MNIST split); cached under the cache root, never beside a
    shipped file."""
    if clf.shipped and cache_dir is None:
        cache_dir = cache_root() / "classifiers"
    if name is None or name == clf.name:
        path = clf.path.with_suffix(".features.npz") if cache_dir is None else Path(cache_dir) / (
            clf.path.stem + ".features.npz")
        tag = clf.description
    else:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "classifiers"
        path = folder / f"{clf.path.stem}-on-{safe}.features.npz"
        tag = f"{clf.description} on {name}"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["tag"]) == tag:
                    return data["features"], data["labels"]
        except (OSError, KeyError, ValueError):
            pass
    images, labels = as_arrays(train)
    feats = clf.embed(images)[0].astype(np.float32)
    atomic_write(path, lambda f: np.savez(f, features=feats, labels=labels, tag=tag), binary=True)
    return feats, labels
