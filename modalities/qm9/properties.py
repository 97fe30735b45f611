"""QM9 molecular properties (the columns of the qm9pack CSVs) in the units EDM reports them.

    table = load_properties()            # {"index": (130831,), "alpha": ..., "gap": ...}, sorted by QM9 index
    values = lookup(table, "gap", mols.index)

The first call reads the property columns of the three CSV files (a few seconds) and caches them beside
the molecule cache, keyed the same way (source paths, sizes, mtimes).
"""
from __future__ import annotations

import csv
import os
import warnings
import zipfile

import numpy as np

from unite_sci.errors import ConfigError, DataError
from unite_sci.files import atomic_write

from . import data as qdata

HARTREE_MEV = 27211.386  # 1 Hartree in meV (CODATA)
# name -> (CSV column, factor to the reported unit, unit); the six EDM conditions on
PROPERTIES: dict[str, tuple[str, float, str]] = {
    "alpha": ("Polarizability_bohr3", 1.0, "bohr^3"),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_MEV, "meV"),
    "homo": ("HOMO_au", HARTREE_MEV, "meV"),
    "lumo": ("LUMO_au", HARTREE_MEV, "meV"),
    "mu": ("Dipole_debye", 1.0, "D"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/(mol K)"),
}


def check_name(name: str) -> str:
    if name not in PROPERTIES:
        raise ConfigError(f"unknown QM9 property {name!r}; valid: {', '.join(PROPERTIES)}")
    return name


def _parse(files: list) -> dict[str, np.ndarray]:
    index, cols = [], {k: [] for k in PROPERTIES}
    for path in files:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            need = ["Index"] + [c for c, _, _ in PROPERTIES.values()]
            absent = [c for c in need if c not in header]
            if absent:
                raise DataError(f"{path}: CSV header lacks column(s) {', '.join(absent)}")
            at = {c: header.index(c) for c in need}
            for row in reader:
                try:
                    index.append(int(row[at["Index"]]))
                    for k, (c, factor, _) in PROPERTIES.items():
                        cols[k].append(float(row[at[c]]) * factor)
                except (ValueError, IndexError) as e:
                    raise DataError(f"{path}, line {reader.line_num}: malformed property row ({e})") from None
    order = np.argsort(np.asarray(index, dtype=np.int64), kind="stable")
    out = {k: np.asarray(v, dtype=np.float64)[order] for k, v in cols.items()}
    out["index"] = np.asarray(index, dtype=np.int64)[order]
    return out


def load_properties(data_dir: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Every property of :data:`PROPERTIES` per molecule, sorted by QM9 index (as :func:`load_qm9`)."""
    files = qdata.source_files(data_dir)
    molecules = qdata._cache_file(files, cache_dir)  # the same key as the molecule cache
    cache = molecules.with_name(molecules.stem + "-properties.npz")
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            warnings.warn(f"ignoring unreadable QM9 property cache {cache} ({e})", stacklevel=2)
    table = _parse(files)
    try:
        atomic_write(cache, lambda f: np.savez(f, **table), binary=True)
    except OSError as e:
        warnings.warn(f"could not write the QM9 property cache {cache} ({e})", stacklevel=2)
    return table


def lookup(table: dict[str, np.ndarray], name: str, index: np.ndarray) -> np.ndarray:
    """Values of property ``name`` for the molecules with QM9 indices ``index``."""
    known = table["index"]
    pos = np.clip(np.searchsorted(known, index), 0, len(known) - 1)
    if (known[pos] != index).any():
        raise DataError("some molecules have no row in the QM9 property table")
    return table[check_name(name)][pos]
