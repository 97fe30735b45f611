"""How alike two representations are, and how much a weight tensor would cost to write down.

- :class:`Alignment`: linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited", eq. for the linear kernel with the standard, biased HSIC estimator) and the mean row-wise cosine
  similarity of two paired representations X (n, d1), Y (n, d2), accumulated over batches of rows::

      CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),  Xc = X - mean over rows

  CKA is 1 for Y = X Q s (Q orthogonal, s > 0 a scalar) and near d / n for independent noise; it does not
  see per-feature norms and scales, the cosine does (it is not centred).
- :func:`histogram_entropy`: Shannon entropy (bits per value) of a ``bins``-bin histogram over a tensor's
  range, the paper's per-tensor description-length proxy (bits x values / 8 = bytes).

Everything is accumulated in float64: the cross-product sums over many rows must not lose the centring.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

BINS = 256


class Alignment:
    """Running sums of two paired representations, from which CKA and the mean cosine follow exactly.

        a = Alignment()
        for x, y in batches:  # x (n_i, d1), y (n_i, d2): row j of x and row j of y are the same item
            a.update(x, y)
        a.cka(), a.cosine()  # the same values as on the concatenated rows

    Memory is O(d1^2 + d2^2 + d1 d2), whatever the number of rows.
    """

    def __init__(self) -> None:
        self.n = 0
        self.cos_sum = 0.0
        self.sx = self.sy = self.xx = self.yy = self.xy = None  # sums of rows and of outer products

    def update(self, x: Tensor, y: Tensor) -> "Alignment":
        """Add paired rows x (n, d1) and y (n, d2)."""
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"paired rows needed: got {tuple(x.shape)} and {tuple(y.shape)}")
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        parts = (x.sum(0), y.sum(0), x.T @ x, y.T @ y, x.T @ y)  # (d1,), (d2,), (d1, d1), (d2, d2), (d1, d2)
        if self.sx is None:
            self.sx, self.sy, self.xx, self.yy, self.xy = parts
        else:
            for name, p in zip(("sx", "sy", "xx", "yy", "xy"), parts):
                setattr(self, name, getattr(self, name) + p)
        if x.shape[1] == y.shape[1]:
            self.cos_sum += float(torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12).sum())
        else:
            self.cos_sum = math.nan  # rows of different widths have no cosine
        self.n += x.shape[0]
        return self

    def cka(self) -> float:
        """Linear CKA of all rows so far (nan with fewer than 2 rows or a constant representation)."""
        if self.n < 2:
            return math.nan
        mx, my = self.sx / self.n, self.sy / self.n
        cxy = self.xy - self.n * torch.outer(mx, my)  # Xc^T Yc
        cxx = self.xx - self.n * torch.outer(mx, mx)
        cyy = self.yy - self.n * torch.outer(my, my)
        den = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
        return float((cxy ** 2).sum() / den) if den > 0 else math.nan

    def cosine(self) -> float:
        """Mean over rows of cos(x_j, y_j) (nan with no rows, or different widths)."""
        return self.cos_sum / self.n if self.n else math.nan


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of paired rows x (n, d1) and y (n, d2); see :class:`Alignment`."""
    return Alignment().update(x, y).cka()


def histogram_entropy(values: Tensor, bins: int = BINS) -> float:
    """Entropy in bits per value of the histogram of ``values`` (any shape) with ``bins`` equal bins from
    its minimum to its maximum; 0 for a constant tensor. Non-finite values are left out."""
    v = values.detach().flatten().double().cpu()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return math.nan
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return 0.0
    counts = torch.histc(v, bins=bins, min=lo, max=hi)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())
