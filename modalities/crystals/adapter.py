"""Crystal adapter: periodic cells with atom types, fractional coordinates and a lattice (SPEC section 7).

Representation (ADiT's): atomic numbers, fractional coordinates in [0, 1), lattice lengths scaled by
N^(1/3) (Angstrom) and angles (degrees), Niggli-reduced cells (``data.py``).

Tokens, one per atom: type embedding + embedding of [sin, cos](2 pi k x) of the fractional coordinates
(integer frequencies k, so the embedding is periodic: x and x + 1 are the same atom) + an embedding of the
normalised lattice, added to every atom token. The core appends exactly one token per element under the
element mask, so the lattice travels inside the atom tokens rather than as a token of its own (ADiT's
encoder does the same); every register, the lattice register included, can read it.

Registers: one per atom (register i absorbs atom i) plus one extra register, the last, for the lattice
(``RegisterLayout(True, max_atoms, extra=1)``).

Heads: per atom, type logits over Z = 1..100 and [sin, cos](2 pi x) for each axis (decoded with atan2,
modulo 1); on the lattice register, the 6 normalised lattice numbers and a composition head: one logit
per element for "this element occurs in the crystal". SPEC's prototype failed mainly on composition (its
per-atom element choices disagreed: 4.5 elements per crystal against 3.0). The lattice register attends
to every atom in the GE and the decoder, and the composition head trains it to summarise the whole
crystal's elements. ``type_decode=composition`` lets each atom choose only among the elements that head
predicts present. Measured on a 10-minute CPU run (200 samples): it cut elements per crystal from 3.8
to 1.9-2.9 (by threshold) without raising compositional validity (69.5 % with argmax) and lowered the
reconstruction match (83 % -> 79-82 %). So ``argmax`` is the default, and the rule stays available.

Reconstruction loss, per crystal then averaged: cross-entropy on types + MSE on the sin/cos pairs (a
periodic error: 2 - 2 cos(2 pi dx) per axis) + MSE on the normalised lattice + binary cross-entropy of the
composition logits (summed over elements). Lattice statistics (mean, std of the 6 numbers) come from the
training split and are saved in the adapter's state, with the distribution of atom counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unite_sci.adapter import AdapterBase, Batch, register
from unite_sci.collapse import warn
from unite_sci.errors import DataError
from unite_sci.model import RegisterLayout
from unite_sci.parallel import resolve_workers
from unite_sci.reduce import masked_mean, percent
from unite_sci.schema import Choice, non_negative, one_of, positive, ranged

from ..atoms import MAX_Z
from . import data as cdata
from .conditioning import NAMES, CrystalConditions
from .elements import ElementFeatures
from .metrics import OXIDATION_SETS

NUM_TYPES = MAX_Z  # classes 0..99 are Z = 1..100; index 100 pads the type embedding
# Fewer unique valid crystals than this (percent; real crystals and healthy runs: 99-100) from at least
# UNIQUE_MIN_VALID valid ones: the generator collapsed, its validity says little (one MP-20 run with a
# collapsed latent drew 87.8 % compositionally valid crystals of 3.5 % uniqueness: one chemistry per atom count).
UNIQUE_MIN_PCT, UNIQUE_MIN_VALID = 50.0, 10


class TypeDecode(Choice):
    argmax = "argmax"
    composition = "composition"
    cell_vote = "cell_vote"
    charge_balanced = "charge_balanced"  # a repair (charge.py): reported beside the model's own validity


@dataclass
class CrystalConfig:
    dataset: str = one_of("mp20", cdata.DATASETS)  # mp20 | perov5 | carbon24
    data_dir: Optional[str] = None      # canonical train/val/test csv folder; None: the offline protocol
    offline_root: Optional[str] = None  # offline copies; None: $UNITE_SCI_CRYSTAL_DATA or the shipped ones
    cache_dir: Optional[str] = None     # parsed-csv cache; None: ~/.cache/unite-sci/crystals, "": off
    holdout_fraction: float = ranged(0.1, lo=0, hi=1, open_lo=True, open_hi=True)  # offline protocol: share
                                        # of the training rows held out as val
    split_seed: int = 0                 # offline protocol: seed of the held-out slice
    max_atoms: int = ranged(0, lo=0, hi=512, note="0 = the data set's limit")  # MP-20 20, Perov-5 5,
                                        # Carbon-24 24
    num_train: int = non_negative(0)    # 0: the whole split; >0 the first n (quick runs, tests)
    extra_train: str = one_of("none", ("none", *cdata.EXTRA_TRAIN))  # extended protocol: "lemat" adds the
                                        # shipped LeMat-Bulk crystals (build_lemat.py) to training only
    num_val: int = non_negative(0)
    num_test: int = non_negative(0)
    load_workers: int = non_negative(0)  # CIF parsing processes (first load only, then cached); 0: all cores
    random_translation: bool = True     # augmentation: one uniform shift of every crystal, modulo 1
    coord_freqs: int = ranged(4, lo=1, hi=12)  # input embedding: sin/cos at frequencies 1, 2, 4, ... (2^(F-1))
    element_features: bool = False      # element embedding and type logits also through chemistry features
                                        # (period, group, block, electronegativity, oxidation states: elements.py)
    type_weight: float = non_negative(1.0)
    coord_weight: float = non_negative(1.0)  # on the sin/cos MSE, summed over the 6 numbers of an atom
    lattice_weight: float = non_negative(1.0)  # on the MSE of the 6 normalised lattice numbers
    composition_weight: float = non_negative(1.0)  # on the presence BCE summed over 100 elements; 0 drops
                                        # the head
    type_decode: TypeDecode = TypeDecode.argmax  # argmax: per atom | composition: among the elements that
                                        # the composition head predicts present (see the module docstring) |
                                        # cell_vote: among the elements worth half an atom (decode_types) |
                                        # charge_balanced: argmax, then the opt-in SMACT repair of
                                        # generated crystals only (charge.py, finish_samples)
    eval_workers: int = non_negative(0)  # 0: all cores
    time_limit_s: float = positive(30.0)  # per StructureMatcher / SMACT call; past it = invalid / no match
    oxidation_states: str = "smact2_default"  # smact2_default (published) | icsd16 | pymatgen | file path
    novelty: bool = True                # StructureMatcher against the training crystals
    wasserstein_reference: int = non_negative(0)  # >0: Wasserstein distances of density and #elements
                                        # against this many test crystals (CDVAE uses the whole test split)
    space_groups: bool = True           # space groups of samples against the training crystals' (symmetry.py)
    condition_on: list = field(default_factory=list)  # composition (atom types given: structure prediction)
                                        # and/or chemsys (a set of elements) and/or num_atoms (the atom
                                        # count as a scalar, always stated when sampling); see conditioning.py
    coverage: bool = False              # COV-R / COV-P (CDVAE, matminer) against the wasserstein_reference
                                        # crystals: about 0.1 s per crystal for the fingerprints
    physics: bool = False               # evaluate: CHGNet relaxation (unless the folder came from `relax`),
                                        # energy above the hull, S.U.N.: tens of CPU-seconds per crystal
    relax_optimizer: str = one_of("FIRE", ("FIRE", "BFGS", "LBFGS", "BFGSLineSearch"))  # CHGNet's
                                        # StructOptimizer (ASE) optimiser
    relax_fmax: float = positive(0.1)   # eV/A: converged below this largest force
    relax_steps: int = positive(500)    # optimiser steps at most
    relax_cell: bool = True             # relax the lattice as well as the positions
    relax_time_limit_s: float = positive(600.0)  # per crystal; past it the crystal counts as not relaxed

    def constraints(self) -> Iterator[tuple[str, str]]:
        if self.oxidation_states not in OXIDATION_SETS and not Path(self.oxidation_states).is_file():
            yield "oxidation_states", (f"{self.oxidation_states!r} is neither one of {', '.join(OXIDATION_SETS)} "
                                       "nor an oxidation-state file")
        if self.type_decode == "composition" and self.composition_weight == 0:
            yield "type_decode", "composition needs the composition head (data.composition_weight > 0)"
        bad = [n for n in self.condition_on if n not in NAMES]
        if bad:
            yield "condition_on", f"unknown crystal condition(s) {bad}; valid: {', '.join(NAMES)}"
        if self.coverage and not self.wasserstein_reference:
            yield "coverage", "coverage needs reference crystals (data.wasserstein_reference > 0)"


# ----------------------------------------------------------------------------- periodic coordinates
def frac_to_sincos(frac: Tensor) -> Tensor:
    """Fractional coordinates (..., 3) -> (..., 3, 2) [sin, cos](2 pi x): the same for x and x + 1."""
    ang = 2 * math.pi * frac
    return torch.stack([ang.sin(), ang.cos()], dim=-1)


def sincos_to_frac(sc: Tensor) -> Tensor:
    """(..., 3, 2) [sin, cos] (any positive scale) -> fractional coordinates (..., 3) in [0, 1)."""
    x = torch.remainder(torch.atan2(sc[..., 0], sc[..., 1]) / (2 * math.pi), 1.0)
    return torch.where(x >= 1.0, torch.zeros_like(x), x)  # remainder can round up to exactly 1.0


# ----------------------------------------------------------------------------- network parts
class CrystalEmbedder(nn.Module):
    """Atom tokens (B, N, d): type + periodic coordinate features + the crystal's lattice."""

    def __init__(self, width: int, coord_freqs: int, element_features: bool = False):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(coord_freqs), persistent=False)  # integers: periodic
        self.type_embed = nn.Embedding(NUM_TYPES + 1, width)
        self.chem = ElementFeatures(width, padded=True) if element_features else None
        self.coord_embed = nn.Linear(6 * coord_freqs, width)
        self.lattice_embed = nn.Linear(6, width)

    def forward(self, data: dict[str, Tensor], mask: Tensor | None) -> Tensor:
        frac = data["frac"]  # (B, N, 3)
        feats = frac_to_sincos(frac.unsqueeze(-1) * self.freqs)  # (B, N, 3, F, 2)
        coords = self.coord_embed(feats.flatten(2))  # (B, N, d)
        lattice = self.lattice_embed(data["lattice"]).unsqueeze(1)  # (B, 1, d), normalised units
        types = self.type_embed(data["types"])  # (B, N, d)
        if self.chem is not None:
            types = types + self.chem.embed(data["types"])
        return types + coords + lattice  # (B, N, d)


class CrystalHeads(nn.Module):
    """Atom registers -> type logits and sin/cos; the last register -> lattice and composition logits."""

    def __init__(self, width: int, composition: bool, element_features: bool = False):
        super().__init__()
        self.types = nn.Linear(width, NUM_TYPES)
        self.chem = ElementFeatures(width, padded=False) if element_features else None
        self.coords = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 6))
        self.lattice = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 6))
        self.composition = nn.Linear(width, NUM_TYPES) if composition else None

    def forward(self, h: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        atoms, cell = h[:, :-1], h[:, -1]  # (B, N, d), (B, d): the lattice register is the last one
        b, n, _ = atoms.shape
        logits = self.types(atoms)  # (B, N, 100)
        if self.chem is not None:  # plus a score against every element's features: neighbours share it
            logits = logits + self.chem.score(atoms)
        out = {"type_logits": logits,
               "sincos": self.coords(atoms).view(b, n, 3, 2),  # (B, N, 3, [sin, cos])
               "lattice": self.lattice(cell)}  # (B, 6) normalised
        if self.composition is not None:
            out["comp_logits"] = self.composition(cell)  # (B, 100)
        return out


# ----------------------------------------------------------------------------- the adapter
@register("mp20")
class CrystalAdapter(AdapterBase):
    config_class = CrystalConfig
    num_classes = 0

    def __init__(self, cfg: CrystalConfig):
        super().__init__(cfg)
        info = cdata.DATASETS[cfg.dataset]
        self.max_atoms = cfg.max_atoms or info.max_atoms
        self.layout = RegisterLayout(True, self.max_atoms, extra=1)
        self.protocol = info.name + ("" if cfg.data_dir else " offline") + (  # named in every report
            "" if cfg.extra_train == "none" else f" + {cdata.EXTRA_TRAIN[cfg.extra_train][1]}")
        self.count_dist = torch.zeros(self.max_atoms + 1, dtype=torch.float64)
        self.lattice_mean = torch.zeros(6)
        self.lattice_std = torch.ones(6)
        self._stats_ready = False
        self._splits: dict[str, cdata.Crystals] | None = None
        self._train_items: list | None = None
        self.conditions = CrystalConditions(list(cfg.condition_on), self.max_atoms) if cfg.condition_on else None

    # ------------------------------------------------------------------ data
    def crystals(self, split: str) -> cdata.Crystals:
        c = self.cfg
        return cdata.load_split(c.dataset, split, c.data_dir, offline_root=c.offline_root,
                                holdout_fraction=c.holdout_fraction, seed=c.split_seed, max_atoms=self.max_atoms,
                                workers=resolve_workers(c.load_workers), cache_dir=c.cache_dir, progress=False,
                                limit={"train": c.num_train, "val": c.num_val, "test": c.num_test}[split],
                                extra_train=c.extra_train)

    def build_splits(self) -> dict[str, cdata.Crystals]:
        if self._splits is None:
            self._splits = {s: self.crystals(s) for s in ("train", "val", "test")}
            train = self._splits["train"]
            if len(train) == 0:
                raise DataError(f"{self.protocol}: the training split is empty")
            self.protocol = train.protocol
            if not self._stats_ready:  # a checkpoint's statistics win over the data at hand
                self._fit_stats(train)
        return self._splits

    def _fit_stats(self, train: cdata.Crystals) -> None:
        lat = np.concatenate([train.scaled_lengths, train.angles], axis=1)  # (M, 6)
        self.lattice_mean = torch.tensor(lat.mean(0), dtype=torch.float32)
        self.lattice_std = torch.tensor(np.maximum(lat.std(0), 1e-3), dtype=torch.float32)  # cubic cells: std 0
        self.count_dist = torch.from_numpy(cdata.atom_count_distribution(train, self.max_atoms))
        if self.conditions is not None:  # saved with the statistics: sampling needs no data files
            self.conditions.fit(train.z)
        self._stats_ready = True

    def _need_stats(self) -> None:
        if not self._stats_ready:
            self.build_splits()

    def item_sizes(self, dataset: cdata.Crystals) -> np.ndarray:
        return dataset.num_atoms

    def collate(self, items: list) -> Batch:
        self._need_stats()
        z, frac, lattice, mask = cdata.pad_batch(items, None)
        if int(mask.sum(1).max()) > self.max_atoms:
            raise DataError(f"a crystal has {int(mask.sum(1).max())} atoms, more than data.max_atoms={self.max_atoms}")
        types = torch.where(mask, z - 1, torch.full_like(z, NUM_TYPES))  # padding index 100
        data = {"types": types, "frac": frac, "lattice": (lattice - self.lattice_mean) / self.lattice_std}
        conds = self.conditions.from_types(types, mask) if self.conditions is not None else {}
        return Batch(data, mask, self.null_cond(len(items)), conds)

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        if not self.cfg.random_translation:
            return batch
        frac = cdata.random_translate(batch.data["frac"], batch.mask, generator)
        return batch.with_data(frac=frac)

    # ------------------------------------------------------------------ network parts
    def build_embedder(self, width: int) -> nn.Module:
        return CrystalEmbedder(width, self.cfg.coord_freqs, self.cfg.element_features)

    def build_heads(self, width: int) -> nn.Module:
        return CrystalHeads(width, self.cfg.composition_weight > 0, self.cfg.element_features)

    def reconstruction_loss(self, out: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, float]]:
        types, frac, mask = batch.data["types"], batch.data["frac"], batch.mask
        ce = F.cross_entropy(out["type_logits"].float().transpose(1, 2), types.clamp_max(NUM_TYPES - 1),
                             reduction="none")  # (B, N)
        se = ((out["sincos"].float() - frac_to_sincos(frac)) ** 2).sum((-1, -2))  # (B, N)
        # mean over a crystal's atoms, then over crystals: every crystal weighs the same
        ce, se = masked_mean(ce, mask).mean(), masked_mean(se, mask).mean()
        lat = ((out["lattice"].float() - batch.data["lattice"]) ** 2).mean(-1).mean()
        c = self.cfg
        loss = c.type_weight * ce + c.coord_weight * se + c.lattice_weight * lat
        parts = {"type_ce": ce.detach(), "coord_mse": se.detach(), "lattice_mse": lat.detach()}
        if "comp_logits" in out:
            present = torch.zeros(len(batch), NUM_TYPES + 1, device=types.device)
            present.scatter_(1, types, 1.0)  # padding lands in the extra column, dropped below
            bce = F.binary_cross_entropy_with_logits(out["comp_logits"].float(), present[:, :NUM_TYPES],
                                                     reduction="none").sum(-1).mean()
            loss = loss + c.composition_weight * bce
            parts["composition_bce"] = bce.detach()
        return loss, parts

    # ------------------------------------------------------------------ conditions
    def condition_specs(self) -> list:
        return self.conditions.specs() if self.conditions is not None else []

    def build_condition_embedders(self, width: int) -> dict[str, nn.Module]:
        return {name: nn.Embedding(NUM_TYPES, width) for name in (self.conditions.token_names if self.conditions else [])}

    def draw_conditions(self, num: int, generator: torch.Generator, given: dict[str, Any]):
        if self.conditions is None:
            return super().draw_conditions(num, generator, given)
        return self.conditions.draw(num, generator, given, lambda: self.build_splits()["train"].z)

    def apply_conditions(self, out: dict[str, Tensor], conds: dict[str, Tensor], mask: Tensor | None):
        return CrystalConditions.apply(out, conds)

    def condition_metrics(self, samples: list, condition: dict[str, Any]) -> dict[str, float]:
        """What ``evaluate`` adds for samples drawn under ``--condition chemsys=Li-Fe-O``: the share of samples
        inside the requested chemical system (their elements a subset of it) and exactly in it, % of all."""
        from .conditioning import parse_elements

        if "chemsys" not in condition:
            return {}
        want = set(parse_elements(condition["chemsys"], "chemsys"))
        got = [set(np.unique(np.asarray(s.z)).tolist()) for s in samples]
        n = max(1, len(got))
        return {"chemsys/inside_pct": round(100 * sum(g <= want for g in got) / n, 2),
                "chemsys/exact_pct": round(100 * sum(g == want for g in got) / n, 2)}

    # ------------------------------------------------------------------ generation
    def sample_sizes(self, num: int, generator: torch.Generator) -> Tensor:
        self._need_stats()
        return cdata.sample_atom_counts(self.count_dist.numpy(), num, generator)

    def decode_types(self, out: dict[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Atomic numbers (B, N): per-atom argmax, restricted to the elements the cell holds if asked.

        ``cell_vote`` (the model's own outputs, no chemistry rule): an element stays only if the atoms'
        probabilities for it sum to at least half an atom (and the cell's most probable element always
        stays); each atom then takes its most probable remaining element. A stray element that one atom
        barely prefers is dropped; an element the cell really holds keeps at least one atom's worth.
        """
        if "types" in out:  # set by finish_samples (generated crystals, charge_balanced)
            return out["types"]
        logits = out["type_logits"].float()
        if self.cfg.type_decode == "cell_vote":
            prob = logits.softmax(-1)  # (B, N, 100)
            if mask is not None:
                prob = prob * mask.unsqueeze(-1).to(prob.device)
            mass = prob.sum(1)  # (B, 100): expected atoms of each element
            allowed = (mass >= 0.5) | F.one_hot(mass.argmax(-1), NUM_TYPES).bool()
            logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        if self.cfg.type_decode == "composition" and "comp_logits" in out:
            comp = out["comp_logits"].float()  # (B, 100)
            allowed = comp > 0  # sigmoid > 0.5
            allowed |= F.one_hot(comp.argmax(-1), NUM_TYPES).bool()  # never an empty set
            logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        return logits.argmax(-1) + 1

    def finish_samples(self, out: dict[str, Tensor], mask: Tensor | None) -> dict[str, Tensor]:
        """``type_decode=charge_balanced`` (generated crystals only): argmax types, then the opt-in SMACT
        repair of :mod:`.charge`; reconstructions keep the argmax."""
        if self.cfg.type_decode != "charge_balanced":
            return out
        from .charge import balance_batch

        logits = out["type_logits"].float()
        return dict(out, types=balance_batch(logits.argmax(-1) + 1, logits, mask, self.cfg.oxidation_states))

    def to_domain(self, out: dict[str, Tensor], mask: Tensor | None) -> list[cdata.CrystalItem]:
        """CrystalItems in physical units: z (n,), frac (n, 3) in [0, 1), lengths (3,) A, angles (3,) deg."""
        lattice = out["lattice"].float().cpu() * self.lattice_std + self.lattice_mean  # (B, 6)
        frac = sincos_to_frac(out["sincos"].float().cpu())
        return cdata.unpad_batch(self.decode_types(out, mask).cpu(), frac, lattice, mask.cpu())

    def items_from_domain(self, objs: list[cdata.CrystalItem]) -> list[cdata.CrystalItem]:
        """Crystals read by :meth:`load_samples` are already items (Niggli-reduced, fractional in [0, 1))."""
        return [cdata.CrystalItem(np.asarray(c.z, np.int64), np.asarray(c.frac, np.float32) % 1.0,
                                  np.asarray(c.lengths, np.float32), np.asarray(c.angles, np.float32), c.id)
                for c in objs]

    def batch_to_domain(self, batch: Batch) -> list[cdata.CrystalItem]:
        lattice = batch.data["lattice"].cpu() * self.lattice_std + self.lattice_mean
        z = batch.data["types"].cpu() + 1
        return cdata.unpad_batch(z, batch.data["frac"].cpu(), lattice, batch.mask.cpu())

    # ------------------------------------------------------------------ metrics and files
    def _workers(self) -> int:
        return resolve_workers(self.cfg.eval_workers)

    def train_items(self) -> list[cdata.CrystalItem]:
        if self._train_items is None:
            train = self.build_splits()["train"]
            self._train_items = [train[i] for i in range(len(train))]
        return self._train_items

    def evaluate(self, samples: list, per_sample_csv: str | None = None) -> dict[str, Any]:
        """Validity, uniqueness, novelty (and Wasserstein distances if asked), keyed by protocol name; one
        warning line when the generated crystals collapsed (:data:`UNIQUE_MIN_PCT`)."""
        from importlib.metadata import version

        from .metrics import evaluate_generation
        from .structures import to_arrays

        c = self.cfg
        train = self.train_items() if c.novelty else None
        reference = None
        if c.wasserstein_reference:
            test = self.build_splits()["test"]
            reference = [test[i] for i in range(min(c.wasserstein_reference, len(test)))]
        res = evaluate_generation(samples, train, per_sample_csv, self._workers(), reference=reference,
                                  protocol=self.protocol, dataset=c.dataset, time_limit_s=c.time_limit_s,
                                  oxidation_states=c.oxidation_states, coverage=c.coverage,
                                  symmetry=c.space_groups, progress=False,
                                  cache_dir=None if c.cache_dir == "" else (c.cache_dir or cdata.default_cache_dir()))
        p = self.protocol
        arrays = [to_arrays(s) for s in samples]
        n_elem = np.array([len(set(a[0].tolist())) for a in arrays if not isinstance(a, str)] or [np.nan])
        res.update({"num_samples": len(samples), "smact_version": version("smact"),
                    f"{p}/elements_per_crystal": round(float(np.nanmean(n_elem)), 4),
                    f"{p}/type_decode": c.type_decode,
                    f"{p}/novelty_reference": (f"{len(train)} training crystals of the {p} protocol"
                                               if train is not None else "off")})
        unique, valid = res.get(f"{p}/unique_pct"), res.get(f"{p}/valid_pct", 0.0) * len(samples) / 100
        if unique is not None and valid >= UNIQUE_MIN_VALID and unique < UNIQUE_MIN_PCT:
            warn(f"{len(samples)} generated crystals collapsed: {unique:.1f} % of the {valid:.0f} valid ones are "
                 f"unique (below {UNIQUE_MIN_PCT:g} %); validity of a collapsed generator says little")
        return res

    def quick_metrics(self, samples: list) -> dict[str, float]:
        """Compositional and structural validity (percent), in this process; no StructureMatcher work."""
        from .metrics import validity

        v = validity(samples, 1, self.cfg.time_limit_s, self.cfg.oxidation_states, progress=False)
        n, p = len(samples), self.protocol
        return {f"{p}/comp_valid_pct": percent(v.comp.sum(), n), f"{p}/struct_valid_pct": percent(v.struct.sum(), n)}

    def evaluate_reconstruction(self, inputs: list, recons: list) -> dict[str, Any]:
        from .metrics import reconstruction_metrics

        return reconstruction_metrics(inputs, recons, self._workers(), protocol=self.protocol,
                                      time_limit_s=self.cfg.time_limit_s,
                                      oxidation_states=self.cfg.oxidation_states, progress=False)

    def export(self, samples: list, out_dir: Path) -> list[Path]:
        """``samples.npz`` (exact arrays, every sample: re-scoring from it repeats the numbers), one CIF per
        buildable sample in ``cifs/``, ``samples.extxyz`` and ``cells.png``."""
        from . import io as cio

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [cio.write_npz(out_dir / "samples.npz", samples)]
        paths += cio.write_cifs(samples, out_dir / "cifs")
        paths.append(cio.write_extxyz(samples, out_dir / "samples.extxyz"))
        paths.append(cio.plot_cells(samples, out_dir / "cells.png"))
        return paths

    def export_reconstructions(self, inputs: list, recons: list, out_dir: Path) -> list[Path]:
        """:meth:`export` of the reconstructions, with cells.png drawing the first 4 inputs each beside its
        reconstruction."""
        from . import io as cio

        paths = self.export(recons, out_dir)
        pairs = [c for pair in zip(inputs, recons) for c in pair][:8]
        titles = [f"{kind} {i}" for i in range(len(pairs) // 2) for kind in ("input", "reconstruction")]
        cio.plot_cells(pairs, Path(out_dir) / "cells.png", titles=titles)
        return paths

    def load_samples(self, path: Path) -> list:
        """A ``samples.npz`` (or a folder holding one), a folder of CIFs (or holding ``cifs/``), a CDVAE
        csv or an extxyz file -> CrystalItems."""
        from . import io as cio

        path = Path(path)
        if path.is_dir():
            if (path / "samples.npz").is_file():
                path = path / "samples.npz"
            elif not any(path.glob("*.cif")) and (path / "cifs").is_dir():
                path = path / "cifs"
            elif not any(path.glob("*.cif")) and (path / "samples.extxyz").is_file():
                path = path / "samples.extxyz"
        if path.suffix == ".npz":
            return cio.read_npz(path)
        found = cio.read_structures(path)
        return [cdata.CrystalItem(np.array([s.specie.Z for s in st], dtype=np.int64), np.mod(st.frac_coords, 1.0),
                                  np.array(st.lattice.abc), np.array(st.lattice.angles), name)
                for st, name in zip(found.structures, found.names)]

    def relax(self, samples: list, out_dir: Path, progress: bool = True) -> dict[str, Any]:
        """CHGNet relaxation (unite_sci/physics.py contract; stability.py)."""
        from .stability import relax_samples

        return relax_samples(self, samples, Path(out_dir), progress)

    def physics(self, samples: list, source: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Energy above the hull, stable / metastable / S.U.N. shares, symmetry before and after relaxation."""
        from .stability import evaluate_physics

        return evaluate_physics(self, samples, Path(source))

    def state_dict(self) -> dict[str, Any]:
        return {"atom_count_distribution": self.count_dist.clone(), "lattice_mean": self.lattice_mean.clone(),
                "lattice_std": self.lattice_std.clone(), "fitted_on": self.protocol,
                **(self.conditions.state_dict() if self.conditions is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lattice_mean" in state:
            self.count_dist = state["atom_count_distribution"].to(torch.float64)
            self.lattice_mean = state["lattice_mean"].float()
            self.lattice_std = state["lattice_std"].float()
            if self.conditions is not None:
                self.conditions.load_state_dict(state)
            self._stats_ready = True
