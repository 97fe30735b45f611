"""Geometry diagnostics of generated molecules against real ones, as MiDi, EQGAT-diff and SemlaFlow report.

Molecules are ``(z, pos)``: atomic numbers (n,) and coordinates (n, 3) in Angstrom, explicit hydrogens.

One bond rule, applied identically to generated and reference molecules: a pair is bonded when EDM's
distance-table bond order is above 0 (:func:`.bonds.edm_bond_orders`, i.e. closer than the tabulated
single-bond length + 10 pm). The bond order only decides bonded or not and the valency; bond types are
element pairs ("C-H", "C-C"), and angle types element triples with the centre in the middle ("C-C-H").
Elements are written heavy atoms first by atomic number, hydrogen last ("C-H", "N-H", "C-O-H").

Metrics (:func:`compare`), all from 1-D empirical distributions:

* ``geometry/bond_w1/<A-B>``: Wasserstein-1 distance of bond lengths (Angstrom) per bond type, for every
  type holding at least ``MIN_TYPE_SHARE`` of the reference bonds; nan when the samples have no such bond.
  ``geometry/bond_w1_mean``: their mean weighted by the reference count of each type (types with a value).
* ``geometry/angle_w1/<A-B-C>``: Wasserstein-1 of bond angles (degrees) for the ``NUM_ANGLE_TYPES`` most
  common reference angle types; ``geometry/angle_w1_mean`` weighted the same way.
* ``geometry/bond_type_tv``: total-variation distance of the bond-type distribution (catches a missing type,
  which the W1 means skip).
* ``geometry/atom_type_tv``: total variation of the element distribution over atoms.
* ``geometry/valency_tv/<E>``: total variation of the valency distribution (summed EDM bond orders) of the
  atoms of element E; ``geometry/valency_tv`` weighted by the reference count of each element.
* ``geometry/min_dist_w1``: Wasserstein-1 of each molecule's smallest interatomic distance (Angstrom).

Molecules that cannot be measured (wrong shapes, non-finite coordinates, atomic numbers outside 1..118, more
than ``protocols.MAX_ATOMS`` atoms) are left out and counted in ``geometry/num_skipped``. An atom with more
than ``MAX_ANGLE_DEGREE`` bonded neighbours (QM9 has at most 4; only atoms piled on top of each other have
more) gives no angles, which bounds the work on garbage; angles with a zero-length arm are dropped.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
from ase.data import chemical_symbols
from scipy.stats import wasserstein_distance

from unite_sci.files import announce_build, atomic_write

from .bonds import edm_bond_orders
from .protocols import MAX_ATOMS

__all__ = ["Geometry", "measure", "reference", "compare", "bond_types", "type_name", "bond_length_png"]

MIN_TYPE_SHARE = 0.001  # bond types below 0.1 % of the reference bonds get no W1 of their own
NUM_ANGLE_TYPES = 10
MAX_ANGLE_DEGREE = 8
_FORMAT = 1  # bump when the cached arrays change meaning
NOTICE_MIN_ITEMS = 1000  # a reference this large takes seconds or more: say so first
MEASURE_CPU_S = 0.011  # CPU seconds per QM9 molecule (10.4 ms measured on 500 training molecules)
_BASE = 128  # type codes: element numbers (< 128) as digits in base 128


@dataclass
class Geometry:
    """Flat arrays of everything measured on a set of molecules (one entry per atom, bond, angle, molecule).

    Attributes:
        atom_z: atomic number per atom, int64 (A,).
        atom_valency: summed EDM bond orders per atom, int64 (A,).
        bond_code: bond type per bond (:func:`type_name` decodes it), int64 (B,).
        bond_length: Angstrom, float64 (B,).
        angle_code: angle type per angle, int64 (C,).
        angle_deg: degrees in [0, 180], float64 (C,).
        min_dist: smallest interatomic distance per molecule with >= 2 atoms, Angstrom, float64 (M,).
        num_molecules: molecules measured.
        num_skipped: molecules left out (see the module docstring).
    """

    atom_z: np.ndarray
    atom_valency: np.ndarray
    bond_code: np.ndarray
    bond_length: np.ndarray
    angle_code: np.ndarray
    angle_deg: np.ndarray
    min_dist: np.ndarray
    num_molecules: int
    num_skipped: int


_FIELDS = tuple(f.name for f in fields(Geometry))
_ARRAYS = _FIELDS[:-2]  # the per-atom, -bond, -angle and -molecule arrays


def _rank(z: np.ndarray) -> np.ndarray:
    """Sort key that writes heavy atoms first by atomic number and hydrogen last ("C-H", "O-H")."""
    return np.where(z == 1, _BASE, z)


def type_name(code: int) -> str:
    """Decode a type code: "C-H" for a bond, "C-C-H" for an angle."""
    digits = []
    while code:
        code, d = divmod(int(code), _BASE)
        digits.append(chemical_symbols[d])
    return "-".join(reversed(digits))


def _usable(z: object, pos: object) -> tuple[np.ndarray, np.ndarray] | None:
    """(z int64 (n,), pos float64 (n, 3)), or None when the molecule cannot be measured."""
    try:
        z_arr = np.asarray(z, dtype=np.float64).reshape(-1)
        p_arr = np.asarray(pos, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    n = len(z_arr)
    if not 1 <= n <= MAX_ATOMS or p_arr.shape != (n, 3) or not np.isfinite(p_arr).all():
        return None
    if (z_arr != np.round(z_arr)).any() or (z_arr < 1).any() or (z_arr > 118).any():
        return None
    return z_arr.astype(np.int64), p_arr


def _angles(z: np.ndarray, pos: np.ndarray, adj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angle codes and angles in degrees, each (C,), for every pair of bonded neighbours of every atom."""
    deg = adj.sum(1)
    ends, centres = [], []
    for b in np.flatnonzero((deg >= 2) & (deg <= MAX_ANGLE_DEGREE)):
        nb = np.flatnonzero(adj[b])
        ia, ic = np.triu_indices(len(nb), 1)
        ends.append(np.stack([nb[ia], nb[ic]], 1))
        centres.append(np.full(len(ia), b))
    if not ends:
        return np.zeros(0, np.int64), np.zeros(0)
    ac, b = np.concatenate(ends), np.concatenate(centres)  # (C, 2), (C,)
    u, v = pos[ac[:, 0]] - pos[b], pos[ac[:, 1]] - pos[b]  # (C, 3) arms
    norm = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    keep = norm > 0
    cos = np.clip((u * v).sum(1)[keep] / norm[keep], -1.0, 1.0)
    za, zc = z[ac[keep, 0]], z[ac[keep, 1]]
    swap = _rank(za) > _rank(zc)
    za, zc = np.where(swap, zc, za), np.where(swap, za, zc)
    return (za * _BASE + z[b[keep]]) * _BASE + zc, np.degrees(np.arccos(cos))


def measure(z_list: Sequence[object], pos_list: Sequence[object], progress: bool = False) -> Geometry:
    """Bond lengths, angles, valencies and closest contacts of molecules (see the module docstring).

    Args:
        z_list: atomic numbers per molecule, each (n_i,).
        pos_list: coordinates per molecule, each (n_i, 3) in Angstrom.
        progress: show a tqdm bar (reference builds).
    """
    from tqdm import tqdm

    parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAYS}
    skipped = 0
    for z, pos in tqdm(zip(z_list, pos_list), total=len(z_list), desc="geometry reference", disable=not progress,
                       leave=False, mininterval=1.0):
        mol = _usable(z, pos)
        if mol is None:
            skipped += 1
            continue
        z, pos = mol
        orders = edm_bond_orders(z, pos)  # (n, n)
        i, j = np.nonzero(np.triu(orders))
        swap = _rank(z[i]) > _rank(z[j])
        zi, zj = np.where(swap, z[j], z[i]), np.where(swap, z[i], z[j])
        parts["atom_z"].append(z)
        parts["atom_valency"].append(orders.sum(1))
        parts["bond_code"].append(zi * _BASE + zj)
        parts["bond_length"].append(np.linalg.norm(pos[i] - pos[j], axis=1))
        code, deg = _angles(z, pos, orders > 0)
        parts["angle_code"].append(code)
        parts["angle_deg"].append(deg)
        if len(z) > 1:
            d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1) + np.diag(np.full(len(z), np.inf))
            parts["min_dist"].append(np.sqrt(d2.min(keepdims=True)).reshape(1))
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    for k in ("atom_z", "atom_valency", "bond_code", "angle_code"):
        arrays[k] = arrays[k].astype(np.int64)  # np.zeros(0) above is float
    return Geometry(**arrays, num_molecules=len(z_list) - skipped, num_skipped=skipped)


def reference(z_list: Sequence[object], pos_list: Sequence[object],
              cache_path: str | os.PathLike | None = None) -> Geometry:
    """:func:`measure` of reference molecules, cached in ``cache_path`` (npz) keyed by the molecules' bytes."""
    key = hashlib.sha1(f"geometry format {_FORMAT}".encode())
    for z, p in zip(z_list, pos_list):
        key.update(np.asarray(z, np.int64).tobytes() + np.asarray(p, np.float32).tobytes())
    if cache_path is not None and Path(cache_path).is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as f:
                if str(f["key"]) == key.hexdigest():
                    return Geometry(**{k: f[k] if k in _ARRAYS else int(f[k]) for k in _FIELDS})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable or old: measure again
    if len(z_list) >= NOTICE_MIN_ITEMS:
        announce_build(f"the geometry reference ({len(z_list):,} training molecules)", "the geometry metrics",
                       len(z_list) * MEASURE_CPU_S, cache_path)
    geo = measure(z_list, pos_list, progress=len(z_list) >= NOTICE_MIN_ITEMS)
    if cache_path is not None:
        arrays = {"key": key.hexdigest(), **{k: getattr(geo, k) for k in _FIELDS}}
        try:  # atomic: a concurrent reader never sees half a file
            atomic_write(cache_path, lambda f: np.savez(f, **arrays), binary=True)
        except OSError as e:  # a read-only cache must not stop an evaluation: measure again next time
            warnings.warn(f"could not write the geometry cache {cache_path} ({e})", stacklevel=2)
    return geo


def _w1(u: np.ndarray, v: np.ndarray) -> float:
    """Wasserstein-1 distance of two 1-D samples (their units), nan when either is empty."""
    return float(wasserstein_distance(u, v)) if len(u) and len(v) else float("nan")


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance of the empirical distributions of two integer arrays (0 to 1)."""
    if not len(a) or not len(b):
        return float("nan")
    values = np.union1d(a, b)
    p = np.searchsorted(values, a)
    q = np.searchsorted(values, b)
    return 0.5 * float(np.abs(np.bincount(p, minlength=len(values)) / len(a)
                              - np.bincount(q, minlength=len(values)) / len(b)).sum())


def _weighted(values: dict[str, float], weights: dict[str, int]) -> float:
    """Mean of the finite values, weighted by ``weights`` (nan when none is finite)."""
    ok = [k for k, v in values.items() if np.isfinite(v)]
    w = np.array([weights[k] for k in ok], dtype=np.float64)
    return float(np.dot([values[k] for k in ok], w) / w.sum()) if ok else float("nan")


def bond_types(ref: Geometry) -> list[tuple[int, int]]:
    """(code, reference count) of the bond types with their own W1, most common first."""
    codes, counts = np.unique(ref.bond_code, return_counts=True)
    keep = counts >= MIN_TYPE_SHARE * counts.sum()
    order = np.argsort(-counts[keep], kind="stable")
    return list(zip(codes[keep][order].tolist(), counts[keep][order].tolist()))


def compare(gen: Geometry, ref: Geometry) -> dict[str, float]:
    """The ``geometry/*`` metrics of ``gen`` against ``ref`` (see the module docstring for units)."""
    out: dict[str, float] = {}
    bond_w1, bond_n = {}, {}
    for code, n in bond_types(ref):
        name = type_name(code)
        bond_n[name] = n
        bond_w1[name] = out[f"geometry/bond_w1/{name}"] = _w1(gen.bond_length[gen.bond_code == code],
                                                                 ref.bond_length[ref.bond_code == code])
    out["geometry/bond_w1_mean"] = _weighted(bond_w1, bond_n)
    codes, counts = np.unique(ref.angle_code, return_counts=True)
    angle_w1, angle_n = {}, {}
    for k in np.argsort(-counts, kind="stable")[:NUM_ANGLE_TYPES]:
        name = type_name(codes[k])
        angle_n[name] = int(counts[k])
        angle_w1[name] = out[f"geometry/angle_w1/{name}"] = _w1(gen.angle_deg[gen.angle_code == codes[k]],
                                                                   ref.angle_deg[ref.angle_code == codes[k]])
    out["geometry/angle_w1_mean"] = _weighted(angle_w1, angle_n)
    out["geometry/bond_type_tv"] = _tv(gen.bond_code, ref.bond_code)
    out["geometry/atom_type_tv"] = _tv(gen.atom_z, ref.atom_z)
    val_tv, val_n = {}, {}
    for z, n in zip(*np.unique(ref.atom_z, return_counts=True)):
        name = chemical_symbols[z]
        val_n[name] = int(n)
        val_tv[name] = out[f"geometry/valency_tv/{name}"] = _tv(gen.atom_valency[gen.atom_z == z],
                                                                   ref.atom_valency[ref.atom_z == z])
    out["geometry/valency_tv"] = _weighted(val_tv, val_n)
    # the share of molecules with a pair closer than MIN_DISTANCE (protocols.MIN_DISTANCE) is the protocol's too_close_fraction
    out["geometry/min_dist_w1"] = _w1(gen.min_dist, ref.min_dist)
    out["geometry/num_molecules"] = float(gen.num_molecules)
    out["geometry/num_skipped"] = float(gen.num_skipped)
    return out


def bond_length_png(path: str | os.PathLike, gen: Geometry, ref: Geometry, bins: int = 60,
                    labels: tuple[str, str] = ("generated", "reference")) -> Path:
    """A grid of density histograms of bond lengths (Angstrom), generated against reference, one per bond
    type of :func:`bond_types`; written atomically to ``path`` (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    types = bond_types(ref)
    cols = min(3, max(1, len(types)))
    rows = max(1, -(-len(types) // cols))
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows))
    # fixed margins: the constrained layout engine takes longer than drawing the histograms
    fig.subplots_adjust(left=0.6 / (4 * cols), right=1 - 0.1 / (4 * cols), bottom=0.55 / (3 * rows),
                        top=1 - 0.35 / (3 * rows), wspace=0.3, hspace=0.55)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (code, _) in zip(axes, types):
        g, r = gen.bond_length[gen.bond_code == code], ref.bond_length[ref.bond_code == code]
        both = np.concatenate([g, r])
        edges = np.linspace(both.min(), both.max() + 1e-6, bins + 1)
        # one filled outline per histogram: bar patches (ax.hist's default) take seconds to draw
        for x, label, color in ((r, labels[1], "tab:blue"), (g, labels[0], "tab:orange")):
            if len(x):
                ax.stairs(np.histogram(x, edges, density=True)[0], edges, fill=True, alpha=0.5, color=color,
                          label=f"{label} ({len(x):,})")
        ax.set_title(f"{type_name(code)}   W1 = {_w1(g, r):.4f} Å")
        ax.set_xlabel("bond length (Å)")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    for ax in axes[len(types):]:
        ax.set_visible(False)
    return atomic_write(path, lambda f: fig.savefig(f, dpi=90, format="png"), binary=True)
