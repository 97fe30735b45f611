"""A complete adapter in under 100 lines: 2-D point clouds on a circle (class 0) or a square (class 1).

Variable size (4-12 points, one register per point) and class-conditional, so it exercises every path
of the core: masks, guidance, per-element registers. A sample is valid when all its points lie within
``tol`` of one of the two shapes.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from unite_sci.adapter import AdapterBase, Batch, register
from unite_sci.errors import DataError
from unite_sci.model import RegisterLayout
from unite_sci.reduce import masked_mean
from unite_sci.schema import non_negative, positive, ranged


@dataclass
class ToyConfig:
    num_train: int = 4096
    num_test: int = 512
    min_points: int = ranged(4, lo=1)  # rules on a field sit on the field (see unite_sci/schema.py) ...
    max_points: int = ranged(12, lo=1)
    noise: float = non_negative(0.01)
    tol: float = positive(0.1)
    seed: int = 0

    def constraints(self) -> Iterator[tuple[str, str]]:  # ... and rules between fields here, as (key, why)
        if self.min_points > self.max_points:
            yield "min_points", f"{self.min_points} > data.max_points {self.max_points}"


def shape_distance(p: np.ndarray) -> np.ndarray:
    """Distance (n, 2 shapes) of points (n, 2) to the unit circle and to the square's perimeter."""
    return np.stack([np.abs(np.linalg.norm(p, axis=1) - 1), np.abs(np.abs(p).max(1) - 1)], 1)


def make_cloud(label: int, n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi, n)
    p = np.stack([np.cos(a), np.sin(a)], 1)
    if label == 1:  # project rays onto the square
        p = p / np.abs(p).max(1, keepdims=True)
    return (p + noise * rng.standard_normal(p.shape)).astype(np.float32)


@register("toy")
class ToyAdapter(AdapterBase):
    config_class = ToyConfig
    num_classes = 2

    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg)
        self.layout = RegisterLayout(per_element=True, count=cfg.max_points)

    def build_splits(self):
        rng, c = np.random.default_rng(self.cfg.seed), self.cfg
        def make(n):
            return [(make_cloud(i % 2, int(rng.integers(c.min_points, c.max_points + 1)), rng, c.noise), i % 2)
                    for i in range(n)]
        return {"train": make(c.num_train), "val": make(c.num_test), "test": make(c.num_test)}

    def collate(self, items):
        n = max(len(p) for p, _ in items)
        pts = torch.zeros(len(items), n, 2)
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        for i, (p, _) in enumerate(items):
            pts[i, :len(p)], mask[i, :len(p)] = torch.from_numpy(p), True
        return Batch({"points": pts}, mask, torch.tensor([y for _, y in items]))

    def build_embedder(self, width):
        lin = nn.Linear(2, width)
        return _Lambda(lambda data, mask: lin(data["points"]), lin)

    def build_heads(self, width):
        lin = nn.Linear(width, 2)
        return _Lambda(lambda h, mask: {"points": lin(h)}, lin)

    def reconstruction_loss(self, out, batch):
        se = ((out["points"] - batch.data["points"]) ** 2).sum(-1)  # (B, N)
        err = masked_mean(se, batch.mask).mean()  # per-sample mean over real points, then over samples
        return err, {"mse": err.detach()}

    def sample_sizes(self, num, generator):
        return torch.randint(self.cfg.min_points, self.cfg.max_points + 1, (num,), generator=generator)

    def to_domain(self, out, mask):
        return [out["points"][i, mask[i]].float().cpu().numpy() for i in range(mask.shape[0])]

    def items_from_domain(self, objs):
        return [(np.asarray(p, dtype=np.float32).reshape(-1, 2), self.num_classes) for p in objs]

    def batch_to_domain(self, batch):
        return self.to_domain(batch.data, batch.mask)

    def evaluate(self, samples, per_sample_csv=None):
        dist = [shape_distance(p).max(0) if len(p) else np.full(2, np.inf) for p in samples]
        valid = [bool(np.isfinite(d).all() and d.min() < self.cfg.tol) for d in dist]
        if per_sample_csv:
            with open(per_sample_csv, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["index", "valid", "shape", "max_distance"])
                w.writerows([i, v, int(np.argmin(d)), float(d.min())] for i, (v, d) in enumerate(zip(valid, dist)))
        return {"toy/validity": 100.0 * float(np.mean(valid)), "toy/circle_share": 100.0 * float(
            np.mean([np.argmin(d) == 0 for d in dist])), "num_samples": len(samples)}

    def quick_metrics(self, samples):
        return {k: v for k, v in self.evaluate(samples).items() if k.startswith("toy/")}  # already cheap

    def evaluate_reconstruction(self, inputs, recons):
        err = np.concatenate([((a - b) ** 2).sum(1) for a, b in zip(inputs, recons)])
        return {"toy/rmse": float(np.sqrt(err.mean()))}

    def export(self, samples, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / "points.npz"
        np.savez(path, points=np.concatenate(samples), sizes=np.array([len(p) for p in samples]))
        return [path]

    def load_samples(self, path):
        path = Path(path) / "points.npz" if Path(path).is_dir() else Path(path)
        try:
            f = np.load(path)
            return np.split(f["points"], np.cumsum(f["sizes"])[:-1])
        except Exception as e:
            raise DataError(f"'{path}' is not a points.npz file: {e}") from None


class _Lambda(nn.Module):
    """Wraps a function around the submodule that owns its parameters."""

    def __init__(self, fn, module: nn.Module):
        super().__init__()
        self.fn, self.inner = fn, module

    def forward(self, *args):
        return self.fn(*args)
