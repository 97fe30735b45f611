"""Energy above an offline convex hull: DFT formation energies of a crystal data set's rows, CHGNet energies
put on their scale by fitted elemental references.

The field's protocol (MatterGen, FlowMM, ADiT) relaxes a sample with a learned potential, then with DFT,
and measures its energy above the Materials Project hull. Neither DFT nor the whole Materials Project is
reachable here, so this module names its own protocol, ``"CHGNet, MP-20 hull"``:

- the hull: every row of the data set's csvs that carries ``formation_energy_per_atom`` (MP-20: train,
  val and test, about 45,000 entries; no CIF needed) plus each element at 0 eV/atom, one pymatgen
  ``PhaseDiagram`` per chemical system, built on first use from the entries whose elements lie inside it;
- the scale: a CHGNet energy per atom ``E`` (uncorrected MPtrj GGA/GGA+U) becomes a formation energy
  ``E_f = E - sum_el x_el mu_el`` (``x``: atom fractions) with per-element references ``mu`` fitted by
  least squares so that CHGNet energies of data crystals reproduce their DFT formation energies
  (``fit_references.py``; MP's anion and +U corrections are linear in composition, so ``mu`` absorbs them
  on average). The fitted references ship as ``chgnet_mp20_refs.json``, hash-checked.
Differences from the published protocol: no DFT step (CHGNet's error on top), a hull of ~45,000 MP-20
entries instead of the ~150,000 of the full Materials Project (fewer competing phases: energies above it
come out lower), and compositions with an element that has no fitted reference get no value (NaN).

Energies are eV/atom throughout. Nothing here imports torch.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
from itertools import combinations
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from unite_sci.errors import DataError

PROTOCOL = "CHGNet, MP-20 hull"
REFS_FILE = Path(__file__).with_name("chgnet_mp20_refs.json")
# sha256 of the shipped references; fit_references.py prints the new value when it rewrites the file
REFS_SHA256 = "b49473d74bf429f0bcf0be3655cb44727a814fa5e81a267cdeadc7abfa351861"
STABLE = 0.0          # eV/atom: on or below the hull
METASTABLE = 0.1      # eV/atom: the field's metastability threshold (MatterGen, ADiT)


def read_formation_energies(paths: Iterable[Path], exclude_ids: set[str] = frozenset()
                            ) -> tuple[list[dict[int, float]], np.ndarray, list[str]]:
    """Compositions (Z -> count, reduced as written by ``pretty_formula``), DFT formation energies (eV/atom)
    and ids of every csv row that has one; rows whose id is in ``exclude_ids`` are left out."""
    from pymatgen.core import Composition

    comps, energies, ids = [], [], []
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        csv.field_size_limit(1 << 30)
        with opener(path, "rt", newline="") as fh:
            for row in csv.DictReader(fh):
                mid, ef = row.get("material_id", ""), row.get("formation_energy_per_atom", "")
                if mid in exclude_ids or not ef or not row.get("pretty_formula"):
                    continue
                try:
                    comp = Composition(row["pretty_formula"])
                    value = float(ef)
                except (ValueError, KeyError):
                    continue
                if math.isfinite(value):
                    comps.append({el.Z: float(n) for el, n in comp.items()})
                    energies.append(value)
                    ids.append(mid)
    return comps, np.asarray(energies, dtype=np.float64), ids


class Hull:
    """Convex hull of formation energies (eV/atom) with elements at zero, queried per chemical system.

    Example::

        hull = Hull(*read_formation_energies(files)[:2])
        hull.e_above_hull({3: 1, 8: 1}, -1.2)   # eV/atom above (negative: below) the hull of Li-O
    """

    def __init__(self, comps: list[Mapping[int, float]], formation_energies: np.ndarray):
        self._by_system: dict[frozenset, list[int]] = {}
        self.comps = [dict(c) for c in comps]
        self.energies = np.asarray(formation_energies, dtype=np.float64)
        for i, c in enumerate(self.comps):
            self._by_system.setdefault(frozenset(c), []).append(i)
        self._diagrams: dict[frozenset, object] = {}

    def __len__(self) -> int:
        return len(self.comps)

    def _diagram(self, system: frozenset):
        if system not in self._diagrams:
            from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
            from pymatgen.core import Composition, Element

            entries = [PDEntry(Composition({Element.from_Z(z): 1}), 0.0) for z in sorted(system)]
            for k in range(1, len(system) + 1):
                for sub in combinations(sorted(system), k):
                    for i in self._by_system.get(frozenset(sub), []):
                        comp = Composition({Element.from_Z(z): n for z, n in self.comps[i].items()})
                        entries.append(PDEntry(comp, float(self.energies[i]) * comp.num_atoms))
            self._diagrams[system] = PhaseDiagram(entries)
        return self._diagrams[system]

    def e_above_hull(self, comp: Mapping[int, float], formation_energy: float) -> float:
        """Energy above the hull (eV/atom; negative below it) of a phase of composition ``comp`` (Z -> count)
        with this formation energy per atom; NaN for a non-finite energy."""
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition, Element

        if not math.isfinite(formation_energy):
            return float("nan")
        composition = Composition({Element.from_Z(int(z)): n for z, n in comp.items() if n > 0})
        pd = self._diagram(frozenset(int(z) for z, n in comp.items() if n > 0))
        entry = PDEntry(composition, formation_energy * composition.num_atoms)
        _, e = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
        return float(e)


def atom_fractions(z: np.ndarray) -> dict[int, float]:
    zs, counts = np.unique(np.asarray(z, dtype=np.int64), return_counts=True)
    return {int(a): float(c) / len(z) for a, c in zip(zs, counts)}


class References:
    """Per-element references mu (eV/atom) that turn CHGNet energies into formation energies."""

    def __init__(self, mu: Mapping[int, float], meta: Mapping | None = None):
        self.mu = {int(k): float(v) for k, v in mu.items()}
        self.meta = dict(meta or {})

    @classmethod
    def load(cls, path: Path = REFS_FILE, sha256: str | None = None) -> "References":
        """The shipped references; a missing file or a hash that differs from ``sha256`` (default: the
        shipped file's) is a one-line :class:`DataError`."""
        if not path.is_file():
            raise DataError(f"{path}: file not found (CHGNet elemental references; rebuild with "
                            "`python -m unite_sci_modalities.crystals.fit_references`)")
        raw = path.read_bytes()
        want = sha256 if sha256 is not None else (REFS_SHA256 if path == REFS_FILE else None)
        if want and hashlib.sha256(raw).hexdigest() != want:
            raise DataError(f"{path}: sha256 {hashlib.sha256(raw).hexdigest()[:12]}... differs from the shipped "
                            f"{want[:12]}...: the file was changed or truncated")
        data = json.loads(raw)
        return cls(data["mu"], data.get("meta"))

    def formation_energy(self, z: np.ndarray, energy_per_atom: float) -> float:
        """CHGNet energy per atom -> formation energy per atom on the hull's scale; NaN if an element of
        ``z`` has no reference."""
        frac = atom_fractions(z)
        if any(a not in self.mu for a in frac):
            return float("nan")
        return float(energy_per_atom - sum(x * self.mu[a] for a, x in frac.items()))

    def missing(self, z: np.ndarray) -> list[int]:
        return sorted({int(a) for a in np.unique(z)} - set(self.mu))


def fit_mu(zs: list[np.ndarray], chgnet_e: np.ndarray, dft_ef: np.ndarray, min_count: int = 3
           ) -> dict[int, float]:
    """Least-squares elemental references: ``chgnet_e - dft_ef ~= x @ mu`` over crystals (eV/atom).
    Elements present in fewer than ``min_count`` crystals get no reference (their crystals are left out)."""
    counts: dict[int, int] = {}
    for z in zs:
        for a in set(int(v) for v in np.unique(z)):
            counts[a] = counts.get(a, 0) + 1
    elements = sorted(a for a, c in counts.items() if c >= min_count)
    col = {a: j for j, a in enumerate(elements)}
    keep = [i for i, z in enumerate(zs) if all(int(a) in col for a in np.unique(z))]
    x = np.zeros((len(keep), len(elements)))
    for r, i in enumerate(keep):
        for a, f in atom_fractions(zs[i]).items():
            x[r, col[a]] = f
    y = (np.asarray(chgnet_e) - np.asarray(dft_ef))[keep]
    mu = np.linalg.lstsq(x, y, rcond=None)[0]
    return {a: float(mu[col[a]]) for a in elements}
