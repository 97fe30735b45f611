"""Your own molecules: SDF, XYZ/extxyz or SMILES files as a modality (``unite-sci train --modality molecules
--data FILE_OR_FOLDER``).

The molecule modality's machinery (:class:`.base.MoleculeAdapterBase`: tokens, heads, losses, metrics,
exports, physics checks) applied to a data set the user names: everything QM9 states as a fact is derived
from the data here, once, and saved in the checkpoint (:meth:`MoleculesAdapter.state_dict`):

* the element table: every element in the data, by atomic number (or ``data.elements`` when given);
* the register count: the largest molecule (or ``data.max_atoms``);
* the split: a seeded permutation cut into ``data.split`` fractions (80 / 10 / 10 by default);
* the size histogram: atom counts of the training split, from which generation draws sizes.

Metrics are QM9's (ADiT and EDM protocols, connected validity, geometry against the training split):
EDM's bond tables cover H B C N O F Al Si P S Cl As Br I Hg Bi, the elements of GEOM; atoms of other
elements never count as EDM-stable (a warning says so). Coordinates are in Angstrom, hydrogens explicit.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from unite_sci.adapter import register
from unite_sci.errors import ConfigError, DataError
from unite_sci.files import cache_root
from unite_sci.model import RegisterLayout
from unite_sci.schema import non_negative, positive, ranged

from ..atoms import z_to_symbol
from . import sources
from .base import RMSD_UNDER, STRAIN_UNDER, MoleculeAdapterBase
from .data import Molecules, MoleculeDataset, atom_count_distribution
from .forcefield import ForceField

SPLITS = ("train", "val", "test")


@dataclass
class MoleculesConfig:
    data_dir: Optional[str] = None      # file, folder or packaged set (sources.py); the CLI's --data
    cache_dir: Optional[str] = None     # default: <cache root>/molecules
    elements: list = field(default_factory=list)  # atomic numbers; empty: every element in the data
    max_atoms: int = ranged(0, lo=0, hi=2000)     # registers; 0: the largest molecule in the data
    max_molecules: int = non_negative(0)          # 0: every entry of the sources; n: the first n
    split: list = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train / val / test fractions
    split_seed: int = 0                 # of the permutation that makes the split
    conformer_seed: int = non_negative(0)  # ETKDG randomSeed for SMILES sources (RDKit embeds 0 and 1 alike)
    mmff: bool = True                   # relax SMILES conformers with MMFF94
    num_train: int = 0                  # >0: only the first n of a split (quick runs, tests)
    num_val: int = 0
    num_test: int = 0
    random_rotation: bool = True
    canonical_frame: bool = False       # principal-axes frame instead of random rotations (see QM9)
    coord_scale: float = positive(1.0)  # Angstrom per network unit
    type_weight: float = 1.0
    coord_weight: float = 1.0
    distance_weight: float = non_negative(0.0)  # pairwise-distance loss, as QM9's
    distance_cutoff: float = positive(2.0)
    eval_workers: int = 0               # 0: all cores (metrics and conformer building)
    time_limit_s: float = positive(30.0)  # per molecule, in evaluation and conformer building
    novelty: bool = True                # SMILES of the training split by the ADiT route (cached)
    geometry: bool = True               # bond length / angle / valency diagnostics against the training split
    physics: bool = False               # evaluate: PoseBusters checks and force-field strain (as QM9's)
    force_field: ForceField = ForceField.mmff94  # mmff94 (RDKit) | gfn2_xtb (needs tblite)
    relax_steps: int = positive(1000)   # L-BFGS-B iterations at most
    relax_fmax: float = positive(0.1)   # kcal/mol/A, largest per-atom force at convergence
    strain_under: float = positive(STRAIN_UNDER)  # kcal/mol, threshold of the strain share
    physics_time_limit_s: float = positive(600.0)  # per molecule in relax and PoseBusters (its 50 conformers
                                                   # take 1-2 s, minutes on a crowded machine): past it = failed
    rmsd_under: float = positive(RMSD_UNDER)      # Angstrom, threshold of the move-RMSD share

    def constraints(self) -> Iterator[tuple[str, str]]:
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            yield "split", f"needs three non-negative fractions (train, val, test) summing to 1, got {list(self.split)}"
        if self.canonical_frame and self.random_rotation:
            yield "canonical_frame", ("a canonical frame and random rotations exclude each other, set "
                                      "data.random_rotation=false")


def random_split(num: int, fractions: list[float], seed: int) -> dict[str, np.ndarray]:
    """Positions (into the data set) of 'train', 'val' and 'test': ``RandomState(seed).permutation(num)``
    cut into round(f_val * num) val and round(f_test * num) test molecules after the train ones."""
    perm = np.random.RandomState(seed).permutation(num)
    n_val, n_test = (int(round(f * num)) for f in fractions[1:])
    n_train = num - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise DataError(f"{num} molecule(s) cannot be split {list(fractions)} into non-empty train, val and "
                        "test sets: add molecules or change data.split")
    return {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}


@register("molecules")
class MoleculesAdapter(MoleculeAdapterBase):
    config_class = MoleculesConfig
    property_units: dict[str, str] = {}  # no properties to probe or condition on

    def __init__(self, cfg: MoleculesConfig):
        super().__init__(cfg)  # the element table and sizes come from the data (properties below)
        self._all: Molecules | None = None
        self._key = ""  # sha256 of the sources and build settings (sources.load_molecules)
        self._table: tuple[list[int], int] | None = None  # (elements, max_atoms)
        self._split_index: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ facts derived from the data
    def data(self) -> Molecules:
        """Every molecule of the sources (built once, then cached; see ``sources.py``)."""
        if self._all is None:
            c = self.cfg
            mols, key = sources.load_molecules(c.data_dir, c.cache_dir, seed=c.conformer_seed, mmff=c.mmff,
                                               limit=c.max_molecules, workers=c.eval_workers,
                                               time_limit_s=c.time_limit_s)
            if self._key and key != self._key:
                raise DataError(f"{c.data_dir}: not the data this checkpoint was trained on (the files or "
                                "data.max_molecules / conformer settings changed)")
            self._all, self._key = mols, key
        return self._all

    def _set_table(self, elements: list[int], max_atoms: int) -> None:
        self._table = ([int(z) for z in elements], int(max_atoms))
        lut = torch.full((120,), -1, dtype=torch.long)
        lut[torch.tensor(self._table[0], dtype=torch.long)] = torch.arange(len(elements))
        self._lut = lut

    def _ensure_table(self) -> tuple[list[int], int]:
        if self._table is None:
            mols, c = self.data(), self.cfg
            found = sorted(set(np.concatenate(mols.z).tolist()))
            elements = sorted(int(z) for z in c.elements) or found
            extra = [z_to_symbol(z) for z in found if z not in elements]
            if extra:
                raise DataError(f"{c.data_dir}: the data hold {', '.join(extra)}, not in data.elements "
                                f"[{', '.join(z_to_symbol(z) for z in elements)}]")
            largest = int(mols.n_atoms.max())
            if c.max_atoms and largest > c.max_atoms:
                raise DataError(f"{c.data_dir}: a molecule has {largest} atoms, more than data.max_atoms={c.max_atoms}")
            _warn_untabulated(elements, c.data_dir)
            self._set_table(elements, c.max_atoms or largest)
        return self._table

    @property
    def elements(self) -> list[int]:
        """Atomic numbers of the type table, ascending (type i = ``elements[i]``)."""
        return self._ensure_table()[0]

    @property
    def layout(self) -> RegisterLayout:
        return RegisterLayout(True, self._ensure_table()[1])

    @property
    def z_to_type(self) -> torch.Tensor:
        """(120,) long: type index of each atomic number, -1 outside the table."""
        self._ensure_table()
        return self._lut

    def split_indices(self) -> dict[str, np.ndarray]:
        if self._split_index is None:
            self._split_index = random_split(len(self.data()), list(self.cfg.split), self.cfg.split_seed)
        return self._split_index

    # ------------------------------------------------------------------ the base's data hooks
    def molecules(self, split: str, frame: bool = True) -> Molecules:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        idx = self.split_indices()[split]
        limit = {"train": self.cfg.num_train, "val": self.cfg.num_val, "test": self.cfg.num_test}[split]
        mols = self.data().subset(idx[:limit] if limit else idx)
        return mols.principal_frame() if frame and self.cfg.canonical_frame else mols

    def build_splits(self):
        if self._splits is None:
            max_atoms = self._ensure_table()[1]
            self._splits = {s: MoleculeDataset(self.molecules(s)) for s in SPLITS}
            train = self._splits["train"].mols
            self.count_dist = torch.from_numpy(atom_count_distribution(train, max_atoms))
        return self._splits

    def reference_cache(self, stem: str, suffix: str) -> Path:
        self.data()  # the key names the data set
        folder = Path(self.cfg.cache_dir) if self.cfg.cache_dir else cache_root() / "molecules"
        return folder / f"{self._key[:24]}-{stem}{suffix}"

    def reference_notes(self) -> dict[str, str]:
        sizes = {s: len(i) for s, i in self.split_indices().items()}
        return {"split": (f"seeded random split {sizes['train']:,} / {sizes['val']:,} / {sizes['test']:,} "
                          f"(data.split_seed={self.cfg.split_seed}) of {self.cfg.data_dir}; novelty against "
                          "the training split"),
                "train": f"training molecules of {self.cfg.data_dir}", "label": "training data"}

    def property_values(self, split: str, name: str) -> np.ndarray:
        raise DataError(f"the molecules modality has no property {name!r}: your files carry none")

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        elements, max_atoms = self._ensure_table()
        if self.count_dist.sum() <= 0:
            self.build_splits()
        return {"atom_count_distribution": self.count_dist.clone(), "elements": list(elements),
                "max_atoms": max_atoms, "data_key": self._key,
                "splits": {s: torch.from_numpy(np.asarray(i, dtype=np.int64)) for s, i in self.split_indices().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "elements" in state:
            self._set_table(list(state["elements"]), int(state["max_atoms"]))
        if "atom_count_distribution" in state:
            self.count_dist = state["atom_count_distribution"].to(torch.float64)
        if "splits" in state:
            self._split_index = {s: i.numpy() for s, i in state["splits"].items()}
        self._key = state.get("data_key", self._key)


def _warn_untabulated(elements: list[int], where: object) -> None:
    """A warning when EDM's protocol cannot judge some elements, or when the data carry no hydrogens."""
    from .bonds import EDM_ALLOWED_VALENCE

    missing = [z_to_symbol(z) for z in elements if z not in EDM_ALLOWED_VALENCE]
    if missing:
        warnings.warn(f"{where}: EDM's bond tables have no valence for {', '.join(missing)}: such atoms never "
                      "count as EDM-stable", stacklevel=3)
    if 1 not in elements:
        warnings.warn(f"{where}: the data hold no hydrogen atoms; the metrics expect explicit hydrogens",
                      stacklevel=3)
