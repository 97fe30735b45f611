"""Read and write molecule files: any set of (atomic numbers, coordinates in Angstrom).

Formats: multi-frame (extended) XYZ through ase, SDF through RDKit (read only here), and a flat ``.npz``
(``z`` (M,) int64, ``pos`` (M, 3) Angstrom, ``n_atoms`` (num,) int64, molecules one after the other).
Readers return ``z`` as int64 (n_i,) and ``pos`` as float64 (n_i, 3) arrays. Any malformed input raises
:class:`DataError` naming the file and the problem: never a traceback from ase or RDKit, never a silently
wrong molecule (empty, atomic number 0, non-finite coordinates, 2D coordinates).
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from unite_sci.errors import DataError
from unite_sci.files import atomic_write

from ..atoms import MAX_Z

XYZ_SUFFIXES = (".xyz", ".extxyz")
SDF_SUFFIXES = (".sdf",)
NPZ_SUFFIXES = (".npz",)


# ---------------------------------------------------------------------------------------------- helpers


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")


def _read_text(path: Path) -> str:
    """The file's contents as UTF-8 text; DataError if it is missing, a folder, empty or not UTF-8."""
    _require_file(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not raw.strip():
        raise DataError(f"{path}: empty file")
    try:
        return raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark written by some editors
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (wrong encoding?) at byte {e.start}") from None


def _one_line(e: BaseException) -> str:
    """A foreign exception as one short line (ase messages can span lines; KeyError quotes its key)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_molecule(path: Path, what: str, z: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate one molecule read from ``path``; ``what`` names it ("frame 3"). Returns int64/float64 copies."""
    z = np.asarray(z)
    pos = np.asarray(pos, dtype=np.float64)
    if len(z) == 0:
        raise DataError(f"{path}: {what} has no atoms")
    if pos.shape != (len(z), 3):
        raise DataError(f"{path}: {what} has positions of shape {pos.shape} for {len(z)} atoms")
    bad = (z < 1) | (z > MAX_Z)
    if bad.any():  # ase reads "X" and RDKit reads "*", "R", "Q" as atomic number 0: not a real element
        atom, value = int(np.argmax(bad)) + 1, int(z[bad][0])
        raise DataError(f"{path}: {what}, atom {atom} is not a known element (Z={value})")
    if not np.isfinite(pos).all():
        raise DataError(f"{path}: {what} has non-finite coordinates")
    return z.astype(np.int64), pos.copy()


def _check_lists(z_list: list[np.ndarray], pos_list: list[np.ndarray]) -> None:
    """Writers' input check: caller mistakes, so ValueError rather than DataError."""
    if len(z_list) != len(pos_list):
        raise ValueError(f"{len(z_list)} atomic-number arrays but {len(pos_list)} position arrays")
    for i, (z, pos) in enumerate(zip(z_list, pos_list)):
        if np.shape(pos) != (len(z), 3):
            raise ValueError(f"molecule {i}: positions of shape {np.shape(pos)} for {len(z)} atoms")


# ---------------------------------------------------------------------------------------------- extxyz


def write_extxyz(
    path: str | os.PathLike,
    z_list: list[np.ndarray],
    pos_list: list[np.ndarray],
    info: list[dict] | None = None,
) -> None:
    """Write molecules as frames of one extended-XYZ file.

    Args:
        z_list: atomic numbers, (n_i,) per molecule.
        pos_list: coordinates in Angstrom, (n_i, 3) per molecule.
        info: optional per-molecule dicts of str/int/float/bool values, written on each frame's comment line.
    """
    from ase import Atoms
    from ase.io import write

    _check_lists(z_list, pos_list)
    if info is not None and len(info) != len(z_list):
        raise ValueError(f"{len(info)} info dicts for {len(z_list)} molecules")
    frames = [
        Atoms(numbers=np.asarray(z), positions=np.asarray(pos, dtype=np.float64), info=dict(extra))
        for z, pos, extra in zip(z_list, pos_list, info if info is not None else [{}] * len(z_list))
    ]
    atomic_write(path, lambda f: write(f, frames, format="extxyz"), binary=False)  # a killed run leaves no half file


def _check_xyz_counts(path: Path, text: str) -> None:
    """Walk the frames' atom-count lines first: a header claiming 10^12 atoms would make ase loop for
    minutes, and a count larger than the lines left is a truncated file."""
    lines = text.splitlines()
    i, frame = 0, 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines between or after frames
            i += 1
            continue
        frame += 1
        head = lines[i].split()[0]
        if not head.isdigit():
            raise DataError(f"{path}: not a valid XYZ file (line {i + 1} should hold frame {frame}'s atom "
                            f"count, found {head[:40]!r})")
        n = int(head)
        if n > len(lines) - i - 2:
            raise DataError(f"{path}: not a valid XYZ file (frame {frame}, line {i + 1}, claims {n} atoms but "
                            f"only {max(len(lines) - i - 2, 0)} lines follow: truncated?)")
        i += n + 2


def read_extxyz(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """Read every frame of an (extended or plain) XYZ file.

    Returns (z_list, pos_list, info_list): int64 (n_i,), float64 (n_i, 3) in Angstrom, and the key=value
    pairs of each frame's comment line.
    """
    from ase.io import read

    path = Path(path)
    text = _read_text(path)
    _check_xyz_counts(path, text)
    try:
        # A file object, not the path: ase would read "name@3.xyz" as an index into "name".
        frames = read(io.StringIO(text), index=":", format="extxyz")
    except KeyError as e:  # ase looks element symbols up in a dict
        raise DataError(f"{path}: unknown element symbol {e.args[0]!r}") from None
    except Exception as e:  # ase raises ValueError, IndexError, XYZError... for other bad files
        reason = _one_line(e).removeprefix("ase.io.extxyz: ")
        raise DataError(f"{path}: not a valid XYZ file ({reason})") from None
    if not frames:
        raise DataError(f"{path}: no XYZ frames found")
    z_list, pos_list, info_list = [], [], []
    for i, atoms in enumerate(frames):
        z, pos = _check_molecule(path, f"frame {i + 1}", atoms.numbers, atoms.positions)
        z_list.append(z)
        pos_list.append(pos)
        info_list.append(dict(atoms.info))
    return z_list, pos_list, info_list


# ---------------------------------------------------------------------------------------------- sdf


def read_sdf(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read every record of an SDF file with explicit hydrogens and its 3D coordinates.

    Records are not sanitised: a generated molecule with odd valences still yields its atoms. Returns
    (z_list, pos_list): int64 (n_i,) and float64 (n_i, 3) in Angstrom.
    """
    from rdkit import Chem, rdBase

    path = Path(path)
    text = _read_text(path)
    z_list, pos_list = [], []
    with rdBase.BlockLogs():  # RDKit would print its own parse errors to stderr; ours says it in one line
        supplier = Chem.SDMolSupplier()
        supplier.SetData(text, sanitize=False, removeHs=False, strictParsing=True)
        try:
            n = len(supplier)
            for i in range(n):
                mol = supplier[i]
                what = f"record {i + 1}"
                if mol is None:
                    reason = "truncated, unknown element or bad numbers?"
                    raise DataError(f"{path}: {what} is not a valid molfile ({reason})")
                if mol.GetNumConformers() == 0:
                    raise DataError(f"{path}: {what} has no coordinates")
                conf = mol.GetConformer()
                if not conf.Is3D():
                    raise DataError(f"{path}: {what} has 2D coordinates; 3D coordinates are needed")
                z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
                z, pos = _check_molecule(path, what, z, conf.GetPositions())
                z_list.append(z)
                pos_list.append(pos)
        except DataError:
            raise
        except Exception as e:  # RDKit raises RuntimeError and its own types on some broken files
            raise DataError(f"{path}: not a valid SDF file ({_one_line(e)})") from None
    if not z_list:
        raise DataError(f"{path}: no SDF records found")
    return z_list, pos_list


# ---------------------------------------------------------------------------------------------- npz


def write_npz(path: str | os.PathLike, z_list: list[np.ndarray], pos_list: list[np.ndarray]) -> None:
    """Write molecules as flat arrays: ``z`` (M,) int64, ``pos`` (M, 3) Angstrom, ``n_atoms`` (num,) int64."""
    _check_lists(z_list, pos_list)
    n_atoms = np.array([len(z) for z in z_list], dtype=np.int64)
    z = np.concatenate([np.asarray(z, dtype=np.int64) for z in z_list]) if z_list else np.zeros(0, np.int64)
    pos = np.concatenate([np.asarray(p) for p in pos_list]) if pos_list else np.zeros((0, 3))
    atomic_write(path, lambda f: np.savez(f, z=z, pos=pos, n_atoms=n_atoms), binary=True)


def read_npz(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read a file written by :func:`write_npz`: (z_list, pos_list), int64 (n_i,) and float64 (n_i, 3)."""
    path = Path(path)
    _require_file(path)
    if not zipfile.is_zipfile(path):  # np.load would call a text file "pickled data"
        raise DataError(f"{path}: not an .npz (zip) archive")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, expected an .npz with z, pos, n_atoms")
        with loaded as f:
            missing = [k for k in ("z", "pos", "n_atoms") if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} (need z, pos, n_atoms)")
            z, pos, n_atoms = f["z"], f["pos"], f["n_atoms"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not a zip, truncated, pickled objects
        raise DataError(f"{path}: not a valid .npz file ({_one_line(e)})") from None
    if z.ndim != 1 or not np.issubdtype(z.dtype, np.integer):
        raise DataError(f"{path}: z must be a 1-D integer array, got {z.dtype} of shape {z.shape}")
    if n_atoms.ndim != 1 or not np.issubdtype(n_atoms.dtype, np.integer) or (n_atoms < 0).any():
        raise DataError(f"{path}: n_atoms must be a 1-D array of non-negative integers")
    if pos.shape != (len(z), 3) or not np.issubdtype(pos.dtype, np.floating):
        raise DataError(f"{path}: pos must be float of shape ({len(z)}, 3), got {pos.dtype} of shape {pos.shape}")
    if int(n_atoms.sum()) != len(z):
        raise DataError(f"{path}: n_atoms sums to {int(n_atoms.sum())} but z has {len(z)} atoms")
    if len(n_atoms) == 0:
        raise DataError(f"{path}: holds no molecules")
    cut = np.cumsum(n_atoms)[:-1]
    out = [_check_molecule(path, f"molecule {i + 1}", zi, pi)
           for i, (zi, pi) in enumerate(zip(np.split(z, cut), np.split(pos, cut)))]
    return [o[0] for o in out], [o[1] for o in out]


# ---------------------------------------------------------------------------------------------- dispatch


def read_molecules(path: str | os.PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read molecules from .xyz/.extxyz, .sdf or .npz (by suffix): (z_list, pos_list) in Angstrom."""
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix in XYZ_SUFFIXES:
        z_list, pos_list, _ = read_extxyz(path)
        return z_list, pos_list
    if suffix in SDF_SUFFIXES:
        return read_sdf(path)
    if suffix in NPZ_SUFFIXES:
        return read_npz(path)
    known = ", ".join(XYZ_SUFFIXES + SDF_SUFFIXES + NPZ_SUFFIXES)
    raise DataError(f"{path}: unknown molecule file type {suffix or '(no suffix)'!r}; supported: {known}")
