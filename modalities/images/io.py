"""Image samples on disk: PNG grids for people, ``.npz`` files for metrics, folders of PNGs.

Saved samples are the contract between sampling and scoring (benchmarks re-score without sampling again):
``.npz`` with ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64, plus optional JSON ``meta``.
Float images in [0, 1] are quantised with rounding, the way a PNG would store them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unite_sci.errors import DataError

from .data import IMAGE_SUFFIXES, read_image


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] (clipped; NaN -> 0, a diverged decoder gives black, not noise) or
    uint8 -> (N, C, H, W) uint8 numpy."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy() if images.dtype != torch.uint8 else images.cpu().numpy()
    if images.dtype == np.uint8:
        return images
    images = np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _tile(cells: list[list[np.ndarray | None]], pad: int, pad_value: int, scale: int) -> np.ndarray:
    """Rows of (C, h, w) uint8 cells (None: blank) -> (H, W, C) uint8 canvas with ``pad`` px gutters."""
    first = next(c for row in cells for c in row if c is not None)
    c, h, w = first.shape
    cols = max(len(row) for row in cells)
    canvas = np.full((pad + len(cells) * (h + pad), pad + cols * (w + pad), c), pad_value, np.uint8)
    for r, row in enumerate(cells):
        for k, cell in enumerate(row):
            if cell is not None:
                top, left = pad + r * (h + pad), pad + k * (w + pad)
                canvas[top:top + h, left:left + w] = cell.transpose(1, 2, 0)
    if scale > 1:  # nearest-neighbour: keeps 28-px digits crisp when enlarged
        canvas = canvas.repeat(scale, 0).repeat(scale, 1)
    return canvas


def _write_png(canvas: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas).save(path)
    return path


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, ncols: int | None = None,
              pad: int = 2, pad_value: int = 255, scale: int = 1) -> Path:
    """N images (N, C, H, W) in [0, 1] or uint8 as one PNG grid, row-major, ``ncols`` (default ~sqrt N) wide."""
    arr = to_uint8(images)
    ncols = ncols or math.ceil(math.sqrt(len(arr)))
    rows = [list(arr[i:i + ncols]) for i in range(0, len(arr), ncols)]
    return _write_png(_tile(rows, pad, pad_value, scale), path)


def save_class_grid(images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor,
                    path: str | Path, per_class: int | None = None, num_classes: int | None = None,
                    pad: int = 2, pad_value: int = 255, scale: int = 1) -> Path:
    """Sample grid with one row per class (row k: the images labelled k, in order; short rows end blank).

    images: (N, C, H, W); labels: (N,) ints in 0..num_classes-1. ``per_class`` caps the row length.
    """
    arr, lab = to_uint8(images), np.asarray(labels, dtype=np.int64)
    if len(arr) != len(lab) or len(arr) == 0:
        raise ValueError(f"{len(arr)} images and {len(lab)} labels: need equal, non-zero counts")
    num_classes = num_classes or int(lab.max()) + 1
    rows = [list(arr[lab == k][:per_class]) or [None] for k in range(num_classes)]
    return _write_png(_tile(rows, pad, pad_value, scale), path)


def save_reconstruction_grid(inputs: torch.Tensor | np.ndarray, reconstructions: torch.Tensor | np.ndarray,
                             path: str | Path, pairs_per_row: int = 8, pad: int = 2, pad_value: int = 255,
                             scale: int = 1) -> Path:
    """Inputs beside their reconstructions: each row holds ``pairs_per_row`` (input, reconstruction) pairs.

    inputs, reconstructions: (N, C, H, W) of one shape, in [0, 1] or uint8.
    """
    a, b = to_uint8(inputs), to_uint8(reconstructions)
    if a.shape != b.shape:
        raise ValueError(f"inputs {a.shape} and reconstructions {b.shape} differ in shape")
    cells = [cell for i in range(len(a)) for cell in (a[i], b[i])]
    step = 2 * pairs_per_row
    rows = [cells[i:i + step] for i in range(0, len(cells), step)]
    return _write_png(_tile(rows, pad, pad_value, scale), path)


def write_npz(path: str | Path, images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor,
              meta: dict[str, Any] | None = None) -> Path:
    """Saves ``images`` (N, C, H, W) as uint8 and ``labels`` (N,) as int64, plus JSON-serialisable ``meta``."""
    arr, lab = to_uint8(images), np.asarray(labels, dtype=np.int64)
    if arr.ndim != 4 or len(arr) != len(lab):
        raise ValueError(f"need (N, C, H, W) images and N labels, got {arr.shape} and {lab.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=arr, labels=lab, meta=json.dumps(meta or {}))
    return path


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``write_npz``'s file -> (images (N, C, H, W) uint8, labels (N,) int64, meta dict)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"].astype(np.int64)
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such samples file") from err
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"{path}: not an images/labels .npz file ({err})") from err
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
        raise DataError(f"{path}: expected uint8 (N, C, H, W) images and N labels, got "
                        f"{images.dtype} {images.shape}, labels {labels.shape}")
    return images, labels, meta


def read_png_folder(folder: str | Path, channels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """All PNG/JPEG files of a folder, sorted by name -> (images (N, C, H, W) uint8, file names).

    ``channels=None`` keeps 1 channel if every image is grayscale, else 3. All images must share one size.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: holds no {'/'.join(IMAGE_SUFFIXES)} images")
    if channels is None:
        from PIL import Image

        modes = set()
        for p in files:
            try:
                with Image.open(p) as im:
                    modes.add(im.mode)
            except OSError as err:
                raise DataError(f"{p}: cannot decode image ({err})") from err
        channels = 1 if modes <= {"L", "1", "I;16", "I", "F"} else 3
    images = [read_image(p, channels) for p in files]  # (C, H, W) each
    if len({im.shape for im in images}) != 1:
        raise DataError(f"{folder}: images differ in size ({sorted({im.shape for im in images})[:3]} ...)")
    return np.stack(images), [p.name for p in files]
