"""Element features that carry chemistry, for the crystal embedder and type head (``data.element_features``).

Per element Z = 1..100 (pymatgen's ``Element`` data): period one-hot (7), group one-hot (18; lanthanides
and actinides count as group 3, as pymatgen gives them), block one-hot (s, p, d, f), Pauling
electronegativity (scaled by 1/4, with a flag where pymatgen has none) and the common oxidation states
-4..+8 multi-hot (13). Nearby elements get similar rows, so what the model learns about one element
(e.g. that it balances Cl-) is shared with its neighbours instead of learnt per lookup-table row.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor, nn

OXIDATION_RANGE = range(-4, 9)
NUM_FEATURES = 7 + 18 + 4 + 2 + len(OXIDATION_RANGE)  # 44


@functools.lru_cache(maxsize=1)
def element_table(num_types: int = 100) -> np.ndarray:
    """(num_types, NUM_FEATURES) float32: row i describes Z = i + 1."""
    import warnings

    from pymatgen.core import Element

    table = np.zeros((num_types, NUM_FEATURES), dtype=np.float32)
    for i in range(num_types):
        with warnings.catch_warnings():  # pymatgen warns about elements without a Pauling value
            warnings.simplefilter("ignore")
            e = Element.from_Z(i + 1)
            x = e.X
        row = table[i]
        row[e.row - 1] = 1.0
        row[7 + e.group - 1] = 1.0
        row[25 + "spdf".index(e.block)] = 1.0
        if x is None or not math.isfinite(x):
            row[30] = 1.0  # no electronegativity known
        else:
            row[29] = x / 4.0
        for ox in e.common_oxidation_states:
            if ox in OXIDATION_RANGE:
                row[31 + ox - OXIDATION_RANGE.start] = 1.0
    return table


class ElementFeatures(nn.Module):
    """Chemistry features of the 100 elements (:func:`elements.element_table`), as an embedding (element
    index -> (d,), the padding index -> 0) and as type logits (hidden (.., d) -> (.., 100) scores)."""

    def __init__(self, width: int, padded: bool, num_types: int = 100):
        super().__init__()
        table = torch.from_numpy(element_table(num_types))  # (100, F)
        if padded:
            table = torch.cat([table, torch.zeros(1, table.shape[1])])  # the padding row
        self.register_buffer("table", table, persistent=False)
        self.proj = nn.Linear(table.shape[1], width, bias=False)

    def embed(self, types: Tensor) -> Tensor:
        return self.proj(self.table[types])  # (B, N, d)

    def score(self, h: Tensor) -> Tensor:
        return h @ self.proj(self.table).t()  # (B, N, 100): hidden against each element's projected features
