"""QM9 adapter: QM9's molecules as a data set of the molecule modality (SPEC section 6).

The machinery (tokens, heads, losses, metrics, exports, physics checks) is every molecule data set's,
:class:`~unite_sci_modalities.molecules.base.MoleculeAdapterBase`. QM9 adds its data source and EDM's split
(``data.py``), its fixed element table (H C N O F) and size (29 atoms), the optional fixed register layout
(``data.registers=fixed``: K registers whose decoder slots predict "no atom" past the molecule's size) and
EDM's property conditioning (``conditioning.py``, ``properties.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from unite_sci.adapter import Batch, register
from unite_sci.conditions import SCALARS
from unite_sci.errors import DataError
from unite_sci.model import RegisterLayout
from unite_sci.schema import Choice, non_negative, positive, ranged

from ..molecules.base import RMSD_UNDER, STRAIN_UNDER, MoleculeAdapterBase
from ..molecules.data import Molecules, MoleculeDataset, atom_count_distribution
from ..molecules.forcefield import ForceField
from . import data as qdata
from .conditioning import PropertyConditions, train_half
from .properties import PROPERTIES


class Registers(Choice):
    per_atom = "per_atom"
    fixed = "fixed"


@dataclass
class QM9Config:
    data_dir: Optional[str] = None      # folder with qm9_part{1,2,3}.csv; default: the qm9pack wheel
    cache_dir: Optional[str] = None
    elements: list = field(default_factory=lambda: [1, 6, 7, 8, 9])  # atomic numbers H C N O F
    max_atoms: int = ranged(29, lo=3, hi=512)
    registers: Registers = Registers.per_atom  # per_atom | fixed
    num_registers: int = 32             # fixed layout only: K >= max_atoms
    num_train: int = 0                  # 0: the whole EDM split; >0 the first n (quick runs, tests)
    num_val: int = 0
    num_test: int = 0
    random_rotation: bool = True
    canonical_frame: bool = False       # put every molecule in its principal-axes frame (atoms.py) instead
                                        # of augmenting with random rotations: no orientations to learn
    coord_scale: float = positive(1.0)  # Angstrom per network unit
    type_weight: float = 1.0
    coord_weight: float = 1.0
    distance_weight: float = non_negative(0.0)  # weight of the pairwise-distance term (MSE of interatomic
    distance_cutoff: float = positive(2.0)      # distances in Angstrom^2, over pairs closer than the cutoff
                                                # in the input: the bonds and 1-3 pairs EDM's tables judge)
    eval_workers: int = 0               # 0: all cores
    time_limit_s: float = positive(30.0)  # per molecule in evaluation; past it = invalid / no match (a
                                          # molecule takes milliseconds: only a hung toolkit call gets here)
    condition_on: list = field(default_factory=list)  # properties to condition on (alpha, gap, homo, lumo,
                                        # mu, Cv: EDM's units), each dropped for guidance (flow.label_dropout)
    train_half: str = ""                # "a" / "b": half of the training split (EDM's conditional protocol)
    novelty: bool = True                # needs the training SMILES (computed once, cached)
    geometry: bool = True               # bond length / angle / valency diagnostics (see molecules/geometry.py)
    physics: bool = False               # evaluate: PoseBusters checks and force-field strain (molecules/physics.py)
    force_field: ForceField = ForceField.mmff94  # relax with mmff94 (RDKit) | gfn2_xtb (needs tblite)
    relax_steps: int = positive(1000)   # L-BFGS-B iterations at most
    relax_fmax: float = positive(0.1)   # kcal/mol/A: converged when the largest per-atom force is below
    strain_under: float = positive(STRAIN_UNDER)  # kcal/mol: the strain share reported is of molecules below
    physics_time_limit_s: float = positive(600.0)  # per molecule in relax and PoseBusters (its 50 conformers
                                                   # take 1-2 s, minutes on a crowded machine): past it = failed
    rmsd_under: float = positive(RMSD_UNDER)      # Angstrom: likewise for the RMSD of the relaxation's move

    def constraints(self) -> Iterator[tuple[str, str]]:
        if self.registers == "fixed" and self.num_registers < self.max_atoms:
            yield "num_registers", (f"{self.num_registers} < data.max_atoms {self.max_atoms}: every atom needs "
                                    "a decoder slot")
        if self.train_half not in ("", "a", "b"):
            yield "train_half", f"must be '', 'a' or 'b', got {self.train_half!r}"
        bad = [n for n in self.condition_on if n not in PROPERTIES]
        if bad:
            yield "condition_on", f"unknown properties {bad}; valid: {', '.join(PROPERTIES)}"
        if self.canonical_frame and self.random_rotation:
            yield "canonical_frame", ("a canonical frame and random rotations exclude each other, set "
                                      "data.random_rotation=false")

@register("qm9")
class QM9Adapter(MoleculeAdapterBase):
    config_class = QM9Config

    def __init__(self, cfg: QM9Config):
        super().__init__(cfg)
        self.elements = [int(z) for z in cfg.elements]
        self.fixed = cfg.registers == "fixed"
        self.layout = (RegisterLayout(False, cfg.num_registers) if self.fixed
                       else RegisterLayout(True, cfg.max_atoms))
        lut = torch.full((120,), -1, dtype=torch.long)
        lut[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.z_to_type = lut
        self.count_dist = torch.zeros(cfg.max_atoms + 1, dtype=torch.float64)
        self.properties = (PropertyConditions(list(cfg.condition_on), cfg.data_dir, cfg.cache_dir)
                           if cfg.condition_on else None)

    # ------------------------------------------------------------------ data
    def molecules(self, split: str, frame: bool = True) -> Molecules:
        """One EDM split (its first ``data.num_<split>`` molecules when set; of 'train', the half
        ``data.train_half``); ``frame=False`` keeps QM9's own orientation."""
        mols = qdata.load_split(split, self.cfg.data_dir, self.cfg.cache_dir)
        limit = {"train": self.cfg.num_train, "val": self.cfg.num_val, "test": self.cfg.num_test}[split]
        mols = mols.subset(np.arange(min(limit, len(mols)))) if limit else mols
        if split == "train":
            mols = train_half(mols, self.cfg.train_half)
        return mols.principal_frame() if frame and self.cfg.canonical_frame else mols

    def build_splits(self):
        if self._splits is None:
            mols = {s: self.molecules(s) for s in ("train", "val", "test")}
            if self.properties is not None:
                self.properties.fit(mols["train"])
            self._splits = {s: MoleculeDataset(m, props=self.properties.values(m) if self.properties else None)
                            for s, m in mols.items()}
            train = self._splits["train"].mols
            if int(train.n_atoms.max()) > self.cfg.max_atoms:
                raise DataError(f"QM9 training molecules have up to {int(train.n_atoms.max())} atoms, "
                                f"more than data.max_atoms={self.cfg.max_atoms}")
            self.count_dist = torch.from_numpy(atom_count_distribution(train, self.cfg.max_atoms))
        return self._splits

    def collate(self, items: list) -> Batch:
        batch = super().collate(items)
        if self.properties is not None:  # items read from files carry no values: not given (NaN)
            none = torch.full((1, len(self.properties.names)), float("nan"))
            batch.conds[SCALARS] = torch.cat([getattr(it, "y", None) if getattr(it, "y", None) is not None
                                              else none for it in items]).float()
        return batch

    # ------------------------------------------------------------------ conditions
    def condition_specs(self) -> list:
        return self.properties.specs() if self.properties is not None else []

    def draw_conditions(self, num: int, generator: torch.Generator, given: dict[str, Any]):
        if self.properties is None:
            return super().draw_conditions(num, generator, given)
        if not len(self.properties.pool_sizes):
            self.build_splits()
        return self.properties.draw(num, generator, given)

    def condition_metrics(self, samples: list, condition: dict[str, Any]) -> dict[str, Any]:
        """The protocol predictor's value of each sample against the requested one (``conditioning.py``)."""
        from .conditioning import condition_metrics

        return condition_metrics(self, samples, condition, str(self.cfg.cache_dir or qdata.default_cache_dir()))

    # ------------------------------------------------------------------ properties
    property_units = {name: unit for name, (_, _, unit) in PROPERTIES.items()}

    def property_values(self, split: str, name: str) -> np.ndarray:
        """Property ``name`` of every item of ``split``, in EDM's units (see ``properties.py``)."""
        from .properties import load_properties, lookup

        mols = self.build_splits()[split].mols
        return lookup(load_properties(self.cfg.data_dir, self.cfg.cache_dir), name, mols.index)

    # ------------------------------------------------------------------ references
    def reference_cache(self, stem: str, suffix: str) -> Path:
        return Path(self.cfg.cache_dir or qdata.default_cache_dir()) / f"{stem}{self.cfg.train_half}{suffix}"

    def reference_notes(self) -> dict[str, str]:
        return {"split": "EDM (100,000 / 17,748 / 13,083), novelty against the training split",
                "train": "QM9 training molecules (EDM split)", "label": "QM9 train"}

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.properties is not None:
            if not len(self.properties.pool_sizes):
                self.build_splits()
            state["properties"] = self.properties.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.properties is not None and "properties" in state:
            self.properties.load_state_dict(state["properties"])
