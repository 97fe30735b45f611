"""Crystal files: CIF per structure, one multi-frame extxyz, a PNG of a few cells, and reading back.

Lengths are Angstrom, angles degrees. Writers take pymatgen Structures, CrystalItems or
``(z, frac, lengths, angles)`` tuples; a sample that cannot be built (NaN, empty, unknown element) is
left out of the files and its index is reported, so file names keep the sample index.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unite_sci.errors import DataError

from . import data as cdata

from .structures import MAX_Z, build_structure, to_arrays


@dataclass
class StructureSet:
    """Structures read from a file or folder, their names, and skipped entries counted by reason."""

    structures: list  # pymatgen Structure
    names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)


def _as_structure(x: Any):
    """pymatgen Structure or None (for a sample that cannot be built)."""
    if hasattr(x, "lattice") and hasattr(x, "frac_coords"):
        return x
    a = to_arrays(x)
    return None if isinstance(a, str) else build_structure(a)[0]


def write_cifs(structures: Sequence[Any], out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """One CIF per sample, ``{prefix}_{index:05d}.cif`` (P1, pymatgen CifWriter); returns the files written."""
    from pymatgen.io.cif import CifWriter
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, x in enumerate(structures):
        s = _as_structure(x)
        if s is None:
            continue
        path = out / f"{prefix}_{i:05d}.cif"
        CifWriter(s).write_file(str(path))
        written.append(path)
    return written


def _to_atoms(s: Any, name: str):
    from ase import Atoms
    atoms = Atoms(numbers=[site.specie.Z for site in s], scaled_positions=s.frac_coords,
                  cell=s.lattice.matrix, pbc=True)
    atoms.info["name"] = name
    return atoms


def write_extxyz(structures: Sequence[Any], path: str | Path) -> Path:
    """All buildable samples as frames of one extended-XYZ file (cell and pbc in each frame header)."""
    from ase.io import write
    frames = [_to_atoms(s, f"sample_{i:05d}") for i, s in ((i, _as_structure(x)) for i, x in enumerate(structures))
              if s is not None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(str(path), frames, format="extxyz")
    return path


def plot_cells(structures: Sequence[Any], path: str | Path, n: int = 8, cols: int = 4,
               titles: Sequence[str] | None = None) -> Path:
    """PNG grid of the first ``n`` cells (ase's matplotlib renderer, unit cell outlined), each titled
    ``titles[i]`` (default its index) and its reduced formula, and below them a colour key of the elements
    drawn (ase's Jmol colours). A cell that cannot be built says so in its place."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    from ase.data import chemical_symbols
    from ase.data.colors import jmol_colors
    from ase.visualize.plot import plot_atoms
    from matplotlib.patches import Patch

    items = [(i, _as_structure(x)) for i, x in enumerate(structures)][:n]
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    drawn: set[int] = set()
    for ax, (i, s) in zip(axes.flat, items):
        name = titles[i] if titles is not None else str(i)
        if s is None:
            ax.text(0.5, 0.5, f"{name}: could not build this cell", ha="center", va="center", fontsize=9,
                    transform=ax.transAxes)
            continue
        atoms = _to_atoms(s, str(i))
        plot_atoms(atoms, ax, rotation="10x,20y,0z", show_unit_cell=2, radii=0.5)
        drawn |= set(atoms.numbers.tolist())
        ax.set_title(f"{name}: {s.composition.reduced_formula}", fontsize=9)
    key = [Patch(facecolor=jmol_colors[z], edgecolor="black", label=chemical_symbols[z]) for z in sorted(drawn)]
    if key:
        fig.legend(handles=key, loc="lower center", ncol=min(len(key), 12), fontsize=9, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0.6 / (3 * rows + 0.6), 1, 1))  # room for the key
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class _Skip(Exception):
    """An entry that is read but unusable; ``args[0]`` is the reason counted."""


def _parse_cif_text(text: str):
    from pymatgen.core import Structure
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_str(text, fmt="cif")
    except Exception:  # noqa: BLE001 - pymatgen raises many types on bad CIFs
        raise _Skip("unparseable_cif") from None
    if len(s) == 0:
        raise _Skip("no_atoms")
    if not s.is_ordered:
        raise _Skip("disordered_site")
    if any(not 1 <= getattr(site.specie, "Z", 0) <= MAX_Z for site in s):
        raise _Skip("unknown_species")
    return s


def read_structures(path: str | Path, max_skip_fraction: float = 0.05) -> StructureSet:
    """Read a folder of ``*.cif``, a CDVAE-format csv (``cif`` column, may be gzipped) or an extxyz file.

    Entries that cannot be parsed are skipped and counted by reason; DataError (naming the file) when
    the path is missing, holds nothing, or more than ``max_skip_fraction`` of its entries are bad.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    structures, names, reasons = [], [], Counter()

    def add(name: str, make: Any) -> None:
        try:
            structures.append(make())
            names.append(name)
        except _Skip as e:
            reasons[str(e)] += 1
        except Exception as e:  # noqa: BLE001 - one bad entry is a counted skip
            reasons[f"unreadable:{type(e).__name__}"] += 1

    if path.is_dir():
        files = sorted(path.glob("*.cif"))
        if not files:
            raise DataError(f"{path}: folder holds no .cif files")
        for f in files:
            add(f.stem, lambda f=f: _parse_cif_text(f.read_text(errors="replace")))
    elif path.name.endswith((".csv", ".csv.gz")):
        from .data import read_rows
        for i, row in enumerate(read_rows(path)):
            if not (row.get("cif") or "").strip():
                reasons["missing_cif"] += 1
                continue
            add(row.get("material_id") or f"row{i}", lambda row=row: _parse_cif_text(row["cif"]))
    elif path.name.endswith((".extxyz", ".xyz")):
        from ase.io import read
        from pymatgen.core import Lattice, Structure
        try:
            frames = read(str(path), index=":", format="extxyz")
        except Exception as e:  # noqa: BLE001 - ase raises many types on malformed files
            raise DataError(f"{path}: not a readable extxyz file ({type(e).__name__}: {str(e)[:120]})") from None
        for i, atoms in enumerate(frames):
            if abs(atoms.cell.volume) < 1e-8 or not atoms.pbc.all():
                reasons["no_periodic_cell"] += 1
                continue
            add(str(atoms.info.get("name", f"frame{i}")),
                lambda a=atoms: Structure(Lattice(a.cell[:]), a.numbers.tolist(), a.positions,
                                          coords_are_cartesian=True))
    else:
        raise DataError(f"{path}: unknown crystal file type (expected a folder of .cif, .csv(.gz) or .extxyz)")
    total = len(structures) + sum(reasons.values())
    if total == 0:
        raise DataError(f"{path}: no structures in the file")
    if sum(reasons.values()) > max_skip_fraction * total:
        top = ", ".join(f"{k} {v}" for k, v in reasons.most_common(3))
        raise DataError(f"{path}: {sum(reasons.values())} of {total} entries unreadable ({top}), more than "
                        f"max_skip_fraction={max_skip_fraction}")
    return StructureSet(structures, names, dict(reasons))


# ----------------------------------------------------------------------------- exact sample files
def write_npz(path: Path, samples: list) -> Path:
    """Flat arrays of every sample (no pickles): num_atoms (M,), z, frac (sum n, 3), lengths, angles (M, 3)."""
    items = [(np.asarray(s[0], np.int64).reshape(-1), np.asarray(s[1], np.float64).reshape(-1, 3),
              np.asarray(s[2], np.float64).reshape(3), np.asarray(s[3], np.float64).reshape(3)) for s in samples]
    np.savez(path, num_atoms=np.array([len(i[0]) for i in items], np.int64),
             z=np.concatenate([i[0] for i in items]) if items else np.zeros(0, np.int64),
             frac=np.concatenate([i[1] for i in items]) if items else np.zeros((0, 3)),
             lengths=np.array([i[2] for i in items]).reshape(-1, 3),
             angles=np.array([i[3] for i in items]).reshape(-1, 3))
    return Path(path)


def read_npz(path: Path) -> list[cdata.CrystalItem]:
    try:
        with np.load(path, allow_pickle=False) as f:
            n, z, frac, lengths, angles = (f[k] for k in ("num_atoms", "z", "frac", "lengths", "angles"))
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a crystal samples.npz ({type(e).__name__}: {e})") from None
    ends = np.cumsum(n)
    return [cdata.CrystalItem(z[e - k:e], frac[e - k:e], lengths[i], angles[i], f"sample{i}")
            for i, (k, e) in enumerate(zip(n, ends))]
