"""Crystal inputs made uniform: any accepted form to arrays, arrays to a pymatgen ``Structure``.

Metrics, coverage and file writers all take pymatgen Structures, CrystalItems, dicts or
``(z, frac, lengths, angles)`` tuples, garbage included; this module turns each into float64 arrays (or a
reason string) and builds a Structure from them (or a reason). It imports no other crystal module, so
``metrics.py``, ``coverage.py`` and ``io.py`` can all import it without a circle.

Lengths are Angstrom, angles degrees, volumes Angstrom^3. Nothing here imports torch: spawned metric
workers import this module (see ``unite_sci/parallel.py``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..atoms import MAX_Z

# CDVAE's structural validity needs volume >= 0.1 A^3; a smaller cell is refused here already, so that
# no caller builds a Structure whose density or distances are meaningless.
MIN_VOLUME = 0.1          # Angstrom^3

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # z (n,), frac (n,3), lengths (3,), angles (3,)


def to_arrays(x: Any) -> Arrays | str:
    """Structure / CrystalItem / (z, frac, lengths, angles) / dict -> float64 arrays, or a reason string."""
    try:
        if hasattr(x, "lattice") and hasattr(x, "frac_coords"):  # pymatgen Structure
            if not x.is_ordered:
                return "disordered_site"
            z = [getattr(s.specie, "Z", 0) for s in x]
            return _clean(z, x.frac_coords, x.lattice.abc, x.lattice.angles)
        if isinstance(x, dict):
            return _clean(x.get("z", x.get("atom_types")), x.get("frac", x.get("frac_coords")),
                          x["lengths"], x["angles"])
        return _clean(*tuple(x)[:4])
    except Exception as e:  # noqa: BLE001 - any unusable input is an invalid sample, never a crash
        return f"bad_input:{type(e).__name__}"


def _clean(z: Any, frac: Any, lengths: Any, angles: Any) -> Arrays:
    z = np.asarray(z).reshape(-1)
    if z.dtype.kind in "US":  # element symbols
        from pymatgen.core import Element
        z = np.array([Element(str(s)).Z for s in z])
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    if len(frac) != len(z):
        raise ValueError("z and frac lengths differ")
    return (np.asarray(z, dtype=np.float64).round().astype(np.int64), frac,
            np.asarray(lengths, dtype=np.float64).reshape(3), np.asarray(angles, dtype=np.float64).reshape(3))


def build_structure(a: Arrays, angle_window: tuple[float, float] | None = None, max_z: int = MAX_Z):
    """(Structure, "") or (None, reason). Never raises."""
    from pymatgen.core import Lattice, Structure
    z, frac, lengths, angles = a
    if len(z) == 0:
        return None, "no_atoms"
    if (z < 1).any() or (z > max_z).any():
        return None, "unknown_element"
    if not (np.isfinite(frac).all() and np.isfinite(lengths).all() and np.isfinite(angles).all()):
        return None, "nan_value"
    if lengths.min() < 0:
        return None, "non_positive_lattice"
    if angle_window is not None and not ((angles > angle_window[0]) & (angles < angle_window[1])).all():
        return None, "angle_outside_window"  # ADiT / FlowMM filter, off by default
    try:
        s = Structure(Lattice.from_parameters(*lengths.tolist(), *angles.tolist()), z.tolist(), frac)
        vol = float(s.volume)
    except Exception:  # noqa: BLE001
        return None, "construction_error"
    if not vol >= MIN_VOLUME:  # also catches NaN from impossible angle triples
        return None, "small_volume"
    return s, ""
