"""QM9 property conditions (EDM's conditional-generation protocol) for the core's scalar conditions.

    unite-sci train --modality qm9 data.condition_on=[gap] data.train_half=b
    unite-sci sample --checkpoint C --condition gap=6500 --num 100

EDM splits the training molecules in two halves: a property predictor learns on half A, the generator on
half B (:func:`train_half`). Values are normalised by the generator's training statistics; sampling draws
(atom count, property) pairs from its training molecules, and a value the user gives replaces the drawn one
(its atom count stays drawn from the data's marginal).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from unite_sci.conditions import SCALARS, ConditionSpec, scalar_value
from unite_sci.errors import ConfigError, UserError

from ..molecules.data import Molecules
from .properties import PROPERTIES, check_name, load_properties, lookup

HALVES = ("", "a", "b")
HALF_SEED = 1  # the permutation that cuts EDM's 100,000 training molecules into halves A and B


def train_half(mols: Molecules, half: str) -> Molecules:
    """Half A or B of the training molecules (a seeded permutation cut in two, each half in data order);
    the whole set for ``""``."""
    if half not in HALVES:
        raise ConfigError(f"data.train_half must be one of '', 'a', 'b'; got {half!r}")
    if not half:
        return mols
    perm = np.random.RandomState(HALF_SEED).permutation(len(mols))
    cut = len(mols) // 2
    return mols.subset(np.sort(perm[:cut] if half == "a" else perm[cut:]))


class PropertyConditions:
    """The configured properties: specs, normalisation, per-molecule values and the sampling pool."""

    def __init__(self, names: list[str], data_dir: str | None = None, cache_dir: str | None = None):
        self.names = [check_name(n) for n in names]
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"data.condition_on names a property twice: {self.names}")
        self.data_dir, self.cache_dir = data_dir, cache_dir
        self.mean = np.zeros(len(self.names))
        self.std = np.ones(len(self.names))
        self.pool_sizes = np.zeros(0, dtype=np.int64)  # training (atom count, normalised values) pairs
        self.pool_values = np.zeros((0, len(self.names)), dtype=np.float32)

    def specs(self) -> list[ConditionSpec]:
        return [ConditionSpec(n, "scalar") for n in self.names]

    def raw(self, mols: Molecules) -> np.ndarray:
        """(n, P) float64 property values in EDM's units."""
        table = load_properties(self.data_dir, self.cache_dir)
        return np.stack([lookup(table, n, mols.index) for n in self.names], 1)

    def fit(self, train: Molecules) -> None:
        """Normalisation and the sampling pool from the generator's training molecules."""
        raw = self.raw(train)
        self.mean, self.std = raw.mean(0), raw.std(0) + 1e-12
        self.pool_sizes = np.asarray(train.n_atoms, dtype=np.int64)
        self.pool_values = self.normalise(raw)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.mean) / self.std).astype(np.float32)

    def values(self, mols: Molecules) -> np.ndarray:
        return self.normalise(self.raw(mols))

    def draw(self, num: int, gen: torch.Generator, given: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
        """(atom count, values) pairs of training molecules; ``given`` values (EDM units) replace columns."""
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise UserError(f"unknown condition(s) {unknown}: this checkpoint takes {', '.join(self.names)}")
        if not len(self.pool_sizes):
            raise UserError("this model has no property statistics (train it with data.condition_on)")
        idx = torch.randint(len(self.pool_sizes), (num,), generator=gen).numpy()
        values = self.pool_values[idx].copy()
        trained = self.to_units(self.pool_values)  # (n, P) in EDM's units
        for name, v in given.items():
            j = self.names.index(name)
            x = scalar_value(name, v, (trained[:, j].min(), trained[:, j].max()), PROPERTIES[name][2])
            values[:, j] = (x - self.mean[j]) / self.std[j]
        return {SCALARS: torch.from_numpy(values)}, torch.from_numpy(self.pool_sizes[idx])

    def to_units(self, normalised: np.ndarray) -> np.ndarray:
        return normalised * self.std + self.mean

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std),
                "pool_sizes": torch.from_numpy(self.pool_sizes), "pool_values": torch.from_numpy(self.pool_values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ConfigError(f"checkpoint conditions {state['names']} differ from data.condition_on {self.names}")
        self.mean, self.std = state["mean"].numpy(), state["std"].numpy()
        self.pool_sizes, self.pool_values = state["pool_sizes"].numpy(), state["pool_values"].numpy()


def condition_metrics(adapter: Any, samples: list, condition: dict[str, Any], cache_dir: str) -> dict[str, Any]:
    """What ``evaluate`` says of samples drawn under ``--condition PROP=VALUE``: EDM's protocol predictor (the
    property MLP of ``predictor.py`` trained on half A of the training molecules, as in ``benchmark qm9-cond``;
    cached, so trained once) predicts each sample's property; the mean and spread of the predictions, their
    MAE to the requested value, and how many samples it could read (QM9's elements, at most 29 atoms).
    Other condition words are not properties and get no row."""
    import sys
    from pathlib import Path

    from .predictor import ELEMENTS, MAX_ATOMS, load_or_train

    asked = {k: v for k, v in condition.items() if k in PROPERTIES}
    if not asked:
        return {}
    half_a = train_half(adapter.molecules("train"), "a")
    table = load_properties(adapter.cfg.data_dir, adapter.cfg.cache_dir)
    readable = [(np.asarray(z), np.asarray(pos)) for z, pos in samples
                if 0 < len(z) <= MAX_ATOMS and set(np.asarray(z).tolist()) <= set(ELEMENTS)]
    out: dict[str, Any] = {}
    for name, value in asked.items():
        want = float(value)
        predictor, _ = load_or_train(name, half_a.z, half_a.pos, lookup(table, name, half_a.index), Path(cache_dir),
                                     progress=lambda line: print(line, file=sys.stderr))
        pred = predictor.predict([z for z, _ in readable], [p for _, p in readable]) if readable else np.zeros(0)
        nan = float("nan")
        out.update({f"{name}/requested": want, f"{name}/unit": PROPERTIES[name][2],
                    f"{name}/predicted_mean": float(pred.mean()) if len(pred) else nan,
                    f"{name}/predicted_std": float(pred.std()) if len(pred) else nan,
                    f"{name}/mae_to_requested": float(np.abs(pred - want).mean()) if len(pred) else nan,
                    f"{name}/predicted_count": len(pred),
                    f"{name}/predictor": "invariant-feature MLP trained on EDM half A (benchmark qm9-cond), "
                                         "not EDM's EGNN"})
    return out
