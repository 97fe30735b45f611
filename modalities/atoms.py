"""Atom helpers shared by the molecule (QM9) and crystal (MP-20) adapters.

Element data come from ase (``ase.data``) so that symbols, atomic numbers and masses are stated once.
Coordinates are in Angstrom everywhere in this module. torch is imported only where a function needs
it: spawned crystal-metric workers import this module (for ``MAX_Z``) and must not pay about 1.7 s and
0.9 GB each for torch (see ``unite_sci/parallel.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from unite_sci.errors import DataError

if TYPE_CHECKING:
    import torch

MAX_Z = 100  # elements 1..100 can be represented; 0 is padding


def symbol_to_z(symbol: str) -> int:
    """Atomic number of an element symbol ("C" -> 6); DataError for an unknown symbol."""
    z = atomic_numbers.get(symbol.strip().capitalize() if len(symbol.strip()) <= 2 else symbol)
    if z is None or z < 1 or z > MAX_Z:
        raise DataError(f"unknown element symbol {symbol!r}")
    return int(z)


def z_to_symbol(z: int) -> str:
    """Element symbol of an atomic number (6 -> "C")."""
    if not 1 <= int(z) <= MAX_Z:
        raise DataError(f"atomic number {z} is outside 1..{MAX_Z}")
    return chemical_symbols[int(z)]


def masses(z: np.ndarray) -> np.ndarray:
    """Atomic masses (amu) for an array of atomic numbers."""
    return atomic_masses[np.asarray(z, dtype=int)]


def center_of_mass(z: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Mass-weighted centre (3,) of positions (N, 3) in Angstrom."""
    m = masses(z)
    return (m[:, None] * pos).sum(0) / m.sum()


def principal_axes_frame(z: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Coordinates (N, 3) in Angstrom rotated into the molecule's principal-axes frame.

    Axes: eigenvectors of the mass-weighted second moment about the centre of mass, largest spread
    first; the sign of each of the first two axes makes the mass-weighted third moment along it
    non-negative, the third axis completes a right-handed frame, so the map is a proper rotation (plus the
    centring) and leaves every distance and angle unchanged. A pose-free representation: the model then
    learns no orientations. Molecules with degenerate moments (symmetric tops) keep an arbitrary but
    deterministic choice among their equivalent frames.
    """
    m = masses(z)[:, None]
    x = pos - (m * pos).sum(0) / m.sum()
    _, vec = np.linalg.eigh((m * x).T @ x)  # ascending eigenvalues
    axes = vec[:, ::-1].copy()  # (3, 3), columns largest spread first
    for k in range(2):
        if (m[:, 0] * (x @ axes[:, k]) ** 3).sum() < 0:
            axes[:, k] *= -1
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    return (x @ axes).astype(pos.dtype)


def random_rotations(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniformly random proper rotation matrices (n, 3, 3), via QR of a Gaussian matrix."""
    import torch  # here, not at the top: see the module docstring

    a = torch.randn(n, 3, 3, generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # unique Haar-distributed Q
    det = torch.det(q)
    q[det < 0, :, 0] *= -1  # reflections -> rotations
    return q
