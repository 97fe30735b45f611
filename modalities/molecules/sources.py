"""The user's molecule files -> one cached set of 3-D molecules (Angstrom, explicit hydrogens, centred).

What ``data.data_dir`` (the CLI's ``--data``) may name:

* a file: ``.sdf`` (3-D records, hydrogens as written), ``.xyz`` / ``.extxyz`` (ase), ``.npz`` (the layout
  of :mod:`.io`), or a SMILES list ``.smi`` / ``.txt`` / ``.csv``, each also gzipped (``.smi.gz``): one
  SMILES a line, its first whitespace-separated field (a CSV: the column named ``smiles`` in any case, else
  the first); lines starting with ``#`` and a header line ``smiles...`` are skipped. A SMILES gets explicit
  hydrogens and one seeded conformer (:mod:`.conformers`);
* a folder: every such file directly in it, in name order;
* a packaged set, :data:`PACKAGED`: MOSES's drug-like SMILES from the ``molsets`` wheel (a data package,
  installed with ``pip install --no-deps molsets==0.3.1`` and never imported).

Building the set is done once: it is cached under ``cache_root()/molecules`` in a file named by the
sha256 of the sources' bytes and the settings that change the result. Conformers are made in chunks over
:func:`unite_sci.parallel.parallel_map`, each chunk saved as it finishes, so an interrupted build resumes.
Molecules keep the sources' order; ``index`` is the position among all entries read (SMILES that gave no
molecule leave gaps).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from unite_sci.errors import DataError
from unite_sci.files import atomic_write, cache_root, file_hash
from unite_sci.parallel import parallel_map, resolve_workers

from ..atoms import center_of_mass
from . import data as mdata
from . import io as mio
from .conformers import FAILED, OK, OUTCOMES, embed_item

# name -> (package, file inside it): data sets that install from PyPI
PACKAGED = {f"moses:{split}": ("moses", f"dataset/data/{split}.csv.gz")
            for split in ("train", "test", "test_scaffolds")}
SMILES_SUFFIXES = (".smi", ".txt", ".csv")
COORD_SUFFIXES = mio.XYZ_SUFFIXES + mio.SDF_SUFFIXES + mio.NPZ_SUFFIXES
CHUNK = 500  # SMILES per saved chunk of a conformer build
SECONDS_PER_CONFORMER = 0.05  # ETKDG + MMFF of a MOSES molecule, one core (measured 0.03 s CPU): for the notice
_FORMAT = 1  # bump when the cached arrays change meaning


def _suffix(path: Path) -> str:
    """The format suffix, below a ``.gz``: ``a.smi.gz`` -> ``.smi``."""
    name = path.name.lower()
    return Path(name[:-3]).suffix if name.endswith(".gz") else path.suffix.lower()


def is_smiles(path: Path) -> bool:
    return _suffix(path) in SMILES_SUFFIXES


def resolve(spec: str | None) -> list[Path]:
    """The files a ``data.data_dir`` value names, in reading order; DataError when there are none."""
    if not spec:
        raise DataError("the molecules modality needs data: --data FILE_OR_FOLDER (data.data_dir), an SDF, "
                        f"XYZ/extxyz or SMILES file, a folder of them, or one of {', '.join(PACKAGED)}")
    if spec in PACKAGED:
        package, inside = PACKAGED[spec]
        found = importlib.util.find_spec(package)  # locates the wheel without running its __init__
        if found is None or not found.submodule_search_locations:
            raise DataError(f"{spec} needs the molsets wheel: pip install --no-deps molsets==0.3.1")
        return [Path(list(found.submodule_search_locations)[0]) / inside]
    path = Path(spec).expanduser()
    known = ", ".join(COORD_SUFFIXES + SMILES_SUFFIXES)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and (is_smiles(p) or p.suffix.lower() in COORD_SUFFIXES))
        if not files:
            raise DataError(f"{path}: folder holds no molecule files ({known}, SMILES lists also .gz)")
        return files
    if not path.exists():
        raise DataError(f"{path}: file or folder not found")
    if not (is_smiles(path) or path.suffix.lower() in COORD_SUFFIXES):
        raise DataError(f"{path}: unknown molecule file type {path.suffix or '(no suffix)'!r}; supported: {known}")
    return [path]


def read_smiles(path: Path) -> list[str]:
    """The SMILES strings of a list file (see the module docstring), in file order."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as e:  # gzip.BadGzipFile included
        raise DataError(f"{path}: cannot read ({e})") from None
    except (UnicodeDecodeError, EOFError):
        raise DataError(f"{path}: not UTF-8 text (wrong encoding, or a truncated .gz?)") from None
    if _suffix(path) == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            raise DataError(f"{path}: empty file")
        header = [h.strip().lower() for h in rows[0]]
        col = header.index("smiles") if "smiles" in header else 0
        body = rows[1:] if "smiles" in header else rows
        out = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        fields = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        out = fields[1:] if fields and fields[0].lower().startswith("smiles") else fields
    if not out:
        raise DataError(f"{path}: no SMILES found")
    return out


def source_key(files: list[Path], settings: str) -> str:
    """sha256 over the files' names and bytes and the build settings (hex)."""
    key = hashlib.sha256(f"format={_FORMAT}|{settings}".encode())
    for f in files:
        key.update(f"|{f.name}|{file_hash(f)}".encode())
    return key.hexdigest()


def _flat(z: list[np.ndarray], pos: list[np.ndarray], smiles: list[str], index: list[int]) -> dict[str, np.ndarray]:
    """Molecules as flat arrays, the layout of QM9's cache (:func:`.data.from_flat` reads them back)."""
    encoded = [s.encode("utf-8") for s in smiles]
    return {"index": np.asarray(index, dtype=np.int64), "n_atoms": np.array([len(a) for a in z], dtype=np.int64),
            "z": np.concatenate(z).astype(np.uint8), "pos": np.concatenate(pos).astype(np.float32),
            "smiles": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "smiles_len": np.array([len(s) for s in encoded], dtype=np.int64)}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)
    except OSError as e:  # a read-only cache must not stop training: build again next time
        warnings.warn(f"could not write the molecules cache {path} ({e}); continuing without it", stacklevel=3)


def conformers(smiles: list[str], seed: int, mmff: bool, workers: int, time_limit_s: float,
               chunks: Path, what: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(outcome, z (n,), pos (n, 3) Angstrom)`` per SMILES; chunks already saved in ``chunks`` are reused."""
    n_workers = resolve_workers(workers)
    minutes = len(smiles) * SECONDS_PER_CONFORMER / n_workers / 60
    print(f"note: building 3-D conformers for {len(smiles):,} SMILES from {what} (RDKit ETKDG + MMFF94, seed "
          f"{seed}; about {minutes:.1f} min on {n_workers} worker(s)), once; cached in {chunks.parent}",
          file=sys.stderr, flush=True)
    out: list[tuple[int, np.ndarray, np.ndarray]] = []
    with tqdm(total=len(smiles), desc="conformers", unit="mol", disable=None) as bar:
        for start in range(0, len(smiles), CHUNK):
            part = chunks / f"{start:09d}.npz"
            try:
                with np.load(part, allow_pickle=False) as f:
                    cut = np.cumsum(f["n_atoms"])[:-1]
                    got = list(zip(f["outcome"].tolist(), np.split(f["z"], cut), np.split(f["pos"], cut)))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # not there yet, or unreadable
                items = [(s, seed, mmff) for s in smiles[start:start + CHUNK]]
                done = parallel_map(embed_item, items, workers, time_limit_s, progress=False)
                empty = (np.zeros(0, np.int64), np.zeros((0, 3)))
                got = [o.value if o.error is None else (FAILED, *empty) for o in done]
                _save(part, {"outcome": np.array([g[0] for g in got], dtype=np.int8),
                             "n_atoms": np.array([len(g[1]) for g in got], dtype=np.int64),
                             "z": np.concatenate([g[1] for g in got]).astype(np.int64),
                             "pos": np.concatenate([g[2] for g in got]).reshape(-1, 3)})
            out += got
            bar.update(len(got))
    return out


def load_molecules(spec: str | None, cache_dir: str | None = None, *, seed: int = 0, mmff: bool = True,
                   limit: int = 0, workers: int = 0, time_limit_s: float = 60.0) -> tuple[mdata.Molecules, str]:
    """All molecules ``spec`` names (the first ``limit`` entries when > 0), centre of mass at 0, and the
    sha256 key of sources and settings. Built once, then read from the cache in well under a second."""
    files = resolve(spec)
    smiles_in = any(is_smiles(f) for f in files)
    settings = f"limit={limit}" + (f"|seed={seed}|mmff={mmff}|rdkit={_rdkit_version()}" if smiles_in else "")
    key = source_key(files, settings)
    folder = Path(cache_dir) if cache_dir else cache_root() / "molecules"
    cache = folder / f"{key[:24]}.npz"
    try:
        with np.load(cache, allow_pickle=False) as f:
            return mdata.from_flat({k: f[k] for k in f.files}), key
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass  # not built yet (or unreadable): build it
    entries: list[str | tuple[np.ndarray, np.ndarray]] = []  # a SMILES, or (z, pos) read from a file
    for f in files:
        if is_smiles(f):
            entries += read_smiles(f)
        else:
            entries += list(zip(*mio.read_molecules(f)))
        if 0 < limit <= len(entries):
            break
    entries = entries[:limit] if limit > 0 else entries
    todo = [i for i, e in enumerate(entries) if isinstance(e, str)]
    chunks = folder / f"{key[:24]}.chunks"
    built = conformers([entries[i] for i in todo], seed, mmff, workers, time_limit_s, chunks,
                       str(spec)) if todo else []
    made = dict(zip(todo, built))
    z, pos, smiles, index, failed = [], [], [], [], {}
    for i, e in enumerate(entries):
        outcome, zi, pi = made[i] if i in made else (OK, *e)
        if not len(zi):
            failed.setdefault(OUTCOMES[outcome], []).append(i)
            continue
        z.append(np.asarray(zi, dtype=np.int64))
        pos.append(np.asarray(pi, dtype=np.float64) - center_of_mass(zi, pi))
        smiles.append(e if isinstance(e, str) else "")
        index.append(i)
    if failed:
        first = min(min(v) for v in failed.values())
        why = (f"{sum(map(len, failed.values()))} of {len(todo):,} SMILES gave no molecule ("
               + ", ".join(f"{reason} {len(v)}" for reason, v in failed.items())
               + f"; first: entry {first + 1}, {entries[first]!r})")
        if not z:
            raise DataError(f"{spec}: no molecule could be built: {why}")
        print(f"note: {why}", file=sys.stderr, flush=True)
    arrays = _flat(z, pos, smiles, index)
    _save(cache, arrays)
    shutil.rmtree(chunks, ignore_errors=True)  # the finished cache holds them all
    return mdata.from_flat(arrays), key


def _rdkit_version() -> str:
    import rdkit

    return rdkit.__version__
