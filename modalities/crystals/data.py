"""Crystal data sets in the CDVAE csv format (MP-20, Perov-5, Carbon-24) and their tensors.

A csv holds one crystal per row: ``material_id``, properties, and ``cif`` (plain or gzipped file).
Each CIF is parsed with pymatgen and Niggli-reduced, as CDVAE and ADiT do. Per crystal we keep
atomic numbers (n,), fractional coordinates in [0, 1) (n, 3), lattice lengths (Angstrom) and angles
(degrees). Rows that cannot be used are skipped and counted by reason; a load fails only when the
skipped share of a file passes ``max_skip_fraction``.

Protocols (dataset facts, stated here once):
- canonical: ``data_dir`` holds the distributed ``train/val/test.csv`` -> protocol "MP-20" etc.
- offline (no ``data_dir``): only val/test are complete on this machine, train is partial (a CIF for
  1,847 of 27,136 rows). Train = val split + train rows that have a CIF, minus a seeded held-out slice
  (``holdout_fraction``, ``seed``) that becomes the validation split; test = the full test split.
  Protocol "MP-20 offline". Perov-5 / Carbon-24 have no train file here: train = val minus the slice.

Offline copies ship with the package (``offline/``, about 8.4 MB: mp_20, perov_5, carbon_24, with their
provenance and licence in ``offline/PROVENANCE.md``); ``$UNITE_SCI_CRYSTAL_DATA`` or ``offline_root`` point
elsewhere. A folder holding a ``SHA256SUMS`` file (the shipped ones do) has every listed file checked before
it is read.

Parsed files are cached as flat npz arrays (no pickles), keyed by file size and mtime.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from unite_sci.errors import ConfigError, DataError
from unite_sci.files import announce_build, atomic_write, cache_root, file_hash
from unite_sci.parallel import parallel_map, resolve_workers

from ..atoms import MAX_Z

if TYPE_CHECKING:  # torch is imported lazily: parsing workers must not pay for it (see unite_sci/parallel.py)
    import torch
    from pymatgen.core import Structure

CACHE_VERSION = 1  # bump when parsing changes, so stale caches are ignored
PARSE_TIME_LIMIT_S = 60.0  # per CIF
PARSE_S_PER_CIF = 0.015  # one CIF parsed and Niggli-reduced on one core (14 ms measured), for the first-use note
SHIPPED_ROOT = Path(__file__).resolve().parent / "offline"  # package data: the offline copies
CHECKSUMS = "SHA256SUMS"  # `sha256sum` format, beside the files it lists


@dataclass(frozen=True)
class DatasetInfo:
    folder: str                    # sub-folder of the offline data root
    name: str                      # protocol name used in every report
    max_atoms: int                 # the data set's own atom limit per cell
    partial_train: str | None      # offline: file with CIFs for only part of the train split


DATASETS: dict[str, DatasetInfo] = {
    "mp20": DatasetInfo("mp_20", "MP-20", 20, "train_partial"),
    "perov5": DatasetInfo("perov_5", "Perov-5", 5, None),
    "carbon24": DatasetInfo("carbon_24", "Carbon-24", 24, None),
}
SPLITS = ("train", "val", "test")
# Extended protocols: real crystals beyond the data set's own, added to its training split only (never to val or
# test) and named in the protocol, so an extended run is never read as the canonical one. name -> (folder of the
# offline root or the shipped copies holding train.csv.gz, protocol suffix). Built by build_lemat.py.
EXTRA_TRAIN: dict[str, tuple[str, str]] = {"lemat": ("lemat", "LeMat")}
EXPECTED_MISSING = "missing_cif_expected"  # rows of a partial file: not counted as bad


class CrystalItem(NamedTuple):
    """One crystal: z (n,) atomic numbers, frac (n, 3) in [0, 1), lengths (3,) Angstrom, angles (3,) deg."""

    z: np.ndarray
    frac: np.ndarray
    lengths: np.ndarray
    angles: np.ndarray
    id: str


@dataclass
class Crystals:
    """A list of crystals with the protocol they belong to. Usable as a torch Dataset of CrystalItem."""

    z: list[np.ndarray]            # per crystal (n,) int64 atomic numbers
    frac: list[np.ndarray]         # per crystal (n, 3) float64 fractional coordinates in [0, 1)
    lengths: np.ndarray            # (M, 3) float64 lattice lengths a, b, c, Angstrom
    angles: np.ndarray             # (M, 3) float64 lattice angles alpha, beta, gamma, degrees
    ids: list[str]
    protocol: str                  # e.g. "MP-20 offline": every report names it
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, i: int) -> CrystalItem:
        return CrystalItem(self.z[i], self.frac[i], self.lengths[i], self.angles[i], self.ids[i])

    @property
    def num_atoms(self) -> np.ndarray:
        """(M,) atoms per cell."""
        return np.array([len(z) for z in self.z], dtype=np.int64)

    @property
    def scaled_lengths(self) -> np.ndarray:
        """(M, 3) lengths / N^(1/3) in Angstrom: removes the trivial growth of cells with atom count."""
        return self.lengths / np.cbrt(self.num_atoms)[:, None]

    def subset(self, index: Sequence[int] | np.ndarray) -> "Crystals":
        idx = [int(i) for i in index]
        return Crystals([self.z[i] for i in idx], [self.frac[i] for i in idx], self.lengths[idx],
                        self.angles[idx], [self.ids[i] for i in idx], self.protocol, dict(self.skipped))

    def structures(self) -> list["Structure"]:
        return [to_structure(*self[i][:4]) for i in range(len(self))]


def to_structure(z: np.ndarray, frac: np.ndarray, lengths: np.ndarray, angles: np.ndarray) -> "Structure":
    """pymatgen Structure from atomic numbers, fractional coordinates, lengths (A) and angles (deg).

    The lattice is built from its parameters (pymatgen's standard orientation), as CDVAE does.
    """
    from pymatgen.core import Lattice, Structure
    lat = Lattice.from_parameters(*[float(v) for v in lengths], *[float(v) for v in angles])
    return Structure(lat, [int(v) for v in z], np.asarray(frac, dtype=float), coords_are_cartesian=False)


# ----------------------------------------------------------------------------- parsing one CIF
def parse_cif(cif: str, max_atoms: int, min_distance: float, max_z: int) -> tuple | str:
    """One CIF -> (z, frac, lengths, angles) after Niggli reduction, or the reason it is unusable."""
    from pymatgen.core import Structure
    if not cif or not cif.strip():
        return "missing_cif"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns on every rounding fix in a CIF
            s = Structure.from_str(cif, fmt="cif")
    except Exception:  # noqa: BLE001 - pymatgen raises many types on bad CIFs
        return "unparseable_cif"
    if len(s) == 0:
        return "no_atoms"
    if not s.is_ordered:
        return "disordered_site"
    z = np.array([getattr(site.specie, "Z", 0) for site in s], dtype=np.int64)
    if (z < 1).any() or (z > max_z).any():  # DummySpecies "X" has Z = 0
        return "unknown_species"
    if len(s) > max_atoms:
        return "too_many_atoms"
    try:
        s = s.get_reduced_structure()  # Niggli
    except Exception:  # noqa: BLE001
        return "niggli_failed"
    if len(s) > 1:
        d = s.distance_matrix + np.eye(len(s)) * 1e9  # minimum-image distances between distinct sites
        if d.min() < min_distance:
            return "close_atoms"
    frac = np.mod(s.frac_coords, 1.0)
    frac[frac >= 1.0] = 0.0  # -1e-17 % 1 == 1.0 in floating point
    z = np.array([site.specie.Z for site in s], dtype=np.int64)
    return z, frac, np.array(s.lattice.abc), np.array(s.lattice.angles)


def _parse_task(args: tuple[str, int, float, int]) -> tuple | str:
    return parse_cif(*args)


# ----------------------------------------------------------------------------- one csv file
@dataclass
class _ParsedFile:
    """Flat arrays of one parsed csv (the npz cache layout)."""

    num_atoms: np.ndarray      # (M,) atoms per parsed crystal
    z: np.ndarray              # (sum n,) int64
    frac: np.ndarray           # (sum n, 3) float64
    lengths: np.ndarray        # (M, 3) Angstrom
    angles: np.ndarray         # (M, 3) degrees
    ids: np.ndarray            # (M,) unicode
    rows: np.ndarray           # (M,) row index in the file of each parsed crystal
    cif_rows: np.ndarray       # row indices that have a CIF at all (candidates of a protocol)
    skip_rows: np.ndarray      # (S,) row indices skipped
    skip_reasons: np.ndarray   # (S,) unicode reason per skipped row
    n_rows: int
    complete: bool = True      # every row parsed (False: only the rows a ``limit`` needed, never cached)

    def items(self, positions: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        ends = np.cumsum(self.num_atoms)
        starts = ends - self.num_atoms
        return ([self.z[starts[p]:ends[p]] for p in positions], [self.frac[starts[p]:ends[p]] for p in positions])


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":  # gzip, whatever the extension says
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CDVAE-format csv (plain or gzipped); DataError naming the file on any format problem."""
    csv.field_size_limit(1 << 27)  # CIFs of large cells exceed the 128 kB default field limit
    try:
        with _open_text(path) as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as a (gzipped) csv ({type(e).__name__}: {e})") from None
    if not rows:
        raise DataError(f"{path}: empty file (no header or no rows)")
    if "cif" not in rows[0]:
        raise DataError(f"{path}: no 'cif' column (columns: {', '.join(k for k in rows[0] if k)[:200]})")
    return rows


def _cache_path(path: Path, settings: dict, cache_dir: Path) -> Path:
    st = path.stat()
    key = json.dumps({"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "version": CACHE_VERSION, **settings}, sort_keys=True)
    return cache_dir / f"{path.name.split('.')[0]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _save_atomic(parsed: _ParsedFile, target: Path) -> None:
    """Write atomically (:func:`atomic_write`): readers never see half a cache."""
    try:
        atomic_write(target, lambda fh: np.savez(fh, **vars(parsed)), binary=True)
    except OSError as e:  # a read-only cache folder only costs speed
        warnings.warn(f"crystal cache not written to {target}: {e}", stacklevel=3)


def _load_cache(target: Path) -> _ParsedFile | None:
    try:
        with np.load(target, allow_pickle=False) as f:
            d = {k: f[k] for k in f.files}
        d["n_rows"], d["complete"] = int(d["n_rows"]), bool(d.get("complete", True))
        return _ParsedFile(**d)
    except Exception:  # noqa: BLE001 - a corrupt or old cache is rebuilt
        return None


def default_cache_dir() -> Path:
    """``crystals`` under :func:`unite_sci.files.cache_root`, the cache root every modality shares."""
    return cache_root() / "crystals"


def parse_file(path: str | Path, max_atoms: int, min_distance: float = 0.5, workers: int = 1,
               cache_dir: str | Path | None = None, progress: bool = True) -> _ParsedFile:
    """Parse every row of one csv (cached). ``cache_dir=""`` disables the cache."""
    path, settings = Path(path), (max_atoms, min_distance, workers, progress)
    cache = _cache_for(path, max_atoms, min_distance, cache_dir)
    if cache is not None and cache.is_file() and (hit := _load_cache(cache)) is not None:
        return hit
    rows = read_rows(path)
    parsed = _parse_rows(path, rows, np.arange(len(rows)), *settings)
    if cache is not None:
        _save_atomic(parsed, cache)
    return parsed


def _cache_for(path: Path, max_atoms: int, min_distance: float, cache_dir: str | Path | None) -> Path | None:
    """The cache file of ``path`` (None: caching off), after the file's existence and checksum are checked."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    verify_checksum(path)
    settings = {"max_atoms": max_atoms, "min_distance": min_distance, "max_z": MAX_Z}
    return None if cache_dir == "" else _cache_path(path, settings, Path(cache_dir or default_cache_dir()))


def _parse_rows(path: Path, rows: list[dict[str, str]], index: np.ndarray, max_atoms: int, min_distance: float,
                workers: int, progress: bool) -> _ParsedFile:
    """Parse the rows ``index`` (ascending) of a file read as ``rows``; the others are neither kept nor skipped."""
    tasks = [(rows[i].get("cif") or "", max_atoms, min_distance, MAX_Z) for i in index]
    n_cif, procs = sum(1 for t in tasks if t[0].strip()), resolve_workers(workers)
    if n_cif * PARSE_S_PER_CIF / procs >= 5:  # minutes of silence on a first use otherwise
        announce_build(f"the parsed crystals of {path.name} ({n_cif} CIFs, {procs} process{'es' * (procs > 1)})",
                       "this data set's first use", n_cif * PARSE_S_PER_CIF / procs)
    # A per-row limit: one pathological CIF must not stall the load (it becomes a counted skip).
    outs = parallel_map(_parse_task, tasks, workers=procs, time_limit_s=PARSE_TIME_LIMIT_S,
                        desc=f"parse {path.name}", progress=progress)
    keep, skip_rows, reasons, vals = [], [], [], []
    for i, o in zip(index.tolist(), outs):
        if isinstance(o.value, tuple):
            keep.append(i)
            vals.append(o.value)
        else:
            skip_rows.append(i)
            reasons.append(o.value if isinstance(o.value, str) else f"error:{o.error}")
    return _ParsedFile(
        num_atoms=np.array([len(v[0]) for v in vals], dtype=np.int64),
        z=np.concatenate([v[0] for v in vals]) if vals else np.zeros(0, np.int64),
        frac=np.concatenate([v[1] for v in vals]) if vals else np.zeros((0, 3)),
        lengths=np.array([v[2] for v in vals]).reshape(-1, 3),
        angles=np.array([v[3] for v in vals]).reshape(-1, 3),
        ids=np.array([rows[i].get("material_id") or f"row{i}" for i in keep], dtype=str),
        rows=np.array(keep, dtype=np.int64),
        cif_rows=_cif_rows(rows),
        skip_rows=np.array(skip_rows, dtype=np.int64), skip_reasons=np.array(reasons, dtype=str),
        n_rows=len(rows))


def _cif_rows(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([i for i, r in enumerate(rows) if (r.get("cif") or "").strip()], dtype=np.int64)


def _check_skips(path: Path, parsed: _ParsedFile, partial: bool, max_skip_fraction: float) -> None:
    reasons = [r for r in parsed.skip_reasons.tolist() if not (partial and r == "missing_cif")]
    base = len(parsed.cif_rows) if partial else parsed.n_rows
    if base == 0 or len(reasons) > max_skip_fraction * base:
        top = ", ".join(f"{k} {v}" for k, v in Counter(reasons).most_common(4))
        raise DataError(f"{path}: {len(reasons)} of {base} rows unusable ({top}), more than "
                        f"max_skip_fraction={max_skip_fraction}; first bad row "
                        f"{int(parsed.skip_rows[0]) + 2 if len(parsed.skip_rows) else '-'} (line number)")


_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256 already checked here


def verify_checksum(path: Path) -> None:
    """DataError naming ``path`` when the ``SHA256SUMS`` beside it lists another hash (no list: no check).

    Guards the shipped copies against truncation or a Git LFS pointer in place of the data; checked once
    per process and file version (about 10 ms per MB).
    """
    sums = path.parent / CHECKSUMS
    if not sums.is_file():
        return
    want = {line.split()[-1].lstrip("*"): line.split()[0] for line in sums.read_text().splitlines() if line.strip()}
    if path.name not in want:
        return
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = file_hash(path)
    if _verified[key] != want[path.name]:
        raise DataError(f"{path}: sha256 {_verified[key][:12]}... differs from {want[path.name][:12]}... in {sums} "
                        "(a damaged or partial copy: reinstall unite-sci or copy the file again)")


# ----------------------------------------------------------------------------- protocols
def default_offline_root() -> Path:
    """Where the offline copies live: $UNITE_SCI_CRYSTAL_DATA, else the copies shipped in the package."""
    env = os.environ.get("UNITE_SCI_CRYSTAL_DATA")
    return Path(env) if env else SHIPPED_ROOT


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_split(dataset: str = "mp20", split: str = "train", data_dir: str | Path | None = None, *,
               offline_root: str | Path | None = None, holdout_fraction: float = 0.1, seed: int = 0,
               max_atoms: int | None = None, min_distance: float = 0.5, max_skip_fraction: float = 0.05,
               workers: int = 1, cache_dir: str | Path | None = None, progress: bool = True,
               limit: int = 0, extra_train: str = "none") -> Crystals:
    """Load one split of a crystal data set.

    data_dir: folder with the canonical ``train/val/test.csv(.gz)`` -> canonical protocol; None -> the
    offline protocol from ``offline_root`` (module docstring). max_atoms: None = the data set's limit.
    min_distance: Angstrom; rows with two atoms closer are skipped. workers: parsing processes.
    limit: > 0 keeps the split's first ``limit`` crystals, the same ones as the whole split's first; a file
    not yet cached is then parsed only as far as needed (a quick run or a test needs seconds, not minutes),
    and ``skipped`` counts only the rows parsed.
    extra_train: "none", or a name of ``EXTRA_TRAIN`` whose crystals join the training split after the data
    set's own (after them, so ``limit`` takes the data set's first); every split's protocol then says so.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown crystal dataset {dataset!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if extra_train != "none" and (extra_train not in EXTRA_TRAIN or dataset != "mp20"):
        raise ConfigError(f"extra_train={extra_train!r}: available for mp20: none, {', '.join(EXTRA_TRAIN)}")
    info = DATASETS[dataset]
    max_atoms = max_atoms or info.max_atoms

    if data_dir is not None:  # canonical protocol, files as distributed
        path = _find(Path(data_dir), split)
        if path is None:
            raise DataError(f"{Path(data_dir) / (split + '.csv')}: file not found (canonical {info.name} split)")
        protocol, sources = info.name, [(path, False)]
    else:
        root = Path(offline_root) if offline_root else default_offline_root()
        if (root / info.folder).is_dir():  # the crystals root, or the data set's own folder
            root = root / info.folder
        protocol = f"{info.name} offline"
        stems = [("test", False)] if split == "test" else [("val", False), (info.partial_train, True)]
        sources = [(_find(root, stem), partial) for stem, partial in stems if stem]
        if sources[0][0] is None:
            raise DataError(f"{root / (stems[0][0] + '.csv')}: file not found (set data_dir or "
                            "$UNITE_SCI_CRYSTAL_DATA)")
        sources = [(path, partial) for path, partial in sources if path is not None]

    # Each file: its cached parse if there is one, else (a limit asked) only its rows, parsed further down.
    files: list[_ParsedFile | list[dict[str, str]]] = []
    for path, _ in sources:
        cache = _cache_for(path, max_atoms, min_distance, cache_dir)
        hit = _load_cache(cache) if cache is not None and cache.is_file() else None
        if hit is None and not limit:
            hit = parse_file(path, max_atoms, min_distance, workers, cache_dir, progress)
        files.append(hit if hit is not None else read_rows(path))
    cif_rows = [f.cif_rows if isinstance(f, _ParsedFile) else _cif_rows(f) for f in files]
    # Held-out slice drawn over rows that have a CIF (parse results do not move it): stable membership.
    n_cand = sum(len(c) for c in cif_rows)
    held = data_dir is None and split != "test"
    want = np.ones(n_cand, dtype=bool)
    if held:
        hold = np.zeros(n_cand, dtype=bool)
        hold[np.random.default_rng(seed).permutation(n_cand)[:int(round(holdout_fraction * n_cand))]] = True
        want = hold if split == "val" else ~hold
    offsets = np.cumsum([0] + [len(c) for c in cif_rows])
    if any(isinstance(f, list) for f in files):
        files = _parse_first(sources, files, [c[want[o:o + len(c)]] for c, o in zip(cif_rows, offsets)], limit,
                             max_atoms, min_distance, workers, progress)
    picks, skips = [], []
    for (path, partial), parsed, offset in zip(sources, files, offsets):
        if parsed.complete:
            _check_skips(path, parsed, partial, max_skip_fraction)
        cand = want[offset + np.searchsorted(parsed.cif_rows, parsed.rows)]
        if not held:
            picks.append((parsed, np.flatnonzero(cand)))
            skips.append((parsed, None, partial))
            continue
        skip_has_cif = np.isin(parsed.skip_rows, parsed.cif_rows)
        skip_sel = np.zeros(len(parsed.skip_rows), dtype=bool)
        skip_sel[skip_has_cif] = want[offset + np.searchsorted(parsed.cif_rows, parsed.skip_rows[skip_has_cif])]
        if split == "train":  # rows without any CIF belong to no slice: report them with train
            skip_sel |= ~skip_has_cif
        picks.append((parsed, np.flatnonzero(cand)))
        skips.append((parsed, skip_sel, partial))
    if extra_train != "none":
        protocol = f"{protocol} + {EXTRA_TRAIN[extra_train][1]}"
    out = _assemble(protocol, picks, skips)
    if extra_train != "none" and split == "train" and not (limit and len(out) >= limit):
        out = _join(out, _extra(extra_train, offline_root, max_atoms, min_distance, max_skip_fraction, workers,
                                cache_dir, progress))
    return out.subset(np.arange(min(limit, len(out)))) if limit else out


def _extra(name: str, offline_root: str | Path | None, max_atoms: int, min_distance: float,
           max_skip_fraction: float, workers: int, cache_dir: str | Path | None, progress: bool) -> Crystals:
    """The crystals of an extended protocol's extra training file (all its rows: none is held out)."""
    folder = EXTRA_TRAIN[name][0]
    roots = [Path(offline_root) if offline_root else default_offline_root(), SHIPPED_ROOT]
    path = next((p for p in (_find(r / folder, "train") for r in roots) if p is not None), None)
    if path is None:
        raise DataError(f"{SHIPPED_ROOT / folder / 'train.csv.gz'}: file not found (extra_train={name})")
    parsed = parse_file(path, max_atoms, min_distance, workers, cache_dir, progress)
    _check_skips(path, parsed, False, max_skip_fraction)
    return _assemble("", [(parsed, np.arange(len(parsed.rows)))], [(parsed, None, False)])


def _join(first: Crystals, extra: Crystals) -> Crystals:
    """``first`` then ``extra``, under ``first``'s protocol; skip counts added."""
    skipped = Counter(first.skipped)
    skipped.update(extra.skipped)
    return Crystals(first.z + extra.z, first.frac + extra.frac, np.concatenate([first.lengths, extra.lengths]),
                    np.concatenate([first.angles, extra.angles]), first.ids + extra.ids, first.protocol,
                    dict(skipped))


def _parse_first(sources: list[tuple[Path, bool]], files: list, wanted: list[np.ndarray], limit: int,
                 max_atoms: int, min_distance: float, workers: int, progress: bool) -> list[_ParsedFile]:
    """Parse the wanted rows of files not yet parsed, in order, until ``limit`` crystals are kept overall."""
    out, kept = [], 0
    for (path, _), f, rows_wanted in zip(sources, files, wanted):
        if isinstance(f, _ParsedFile):
            out.append(f)
            kept += int(np.isin(f.rows, rows_wanted).sum())
            continue
        done, nothing = 0, np.zeros(0, dtype=np.int64)
        parts = [_parse_rows(path, f, nothing, max_atoms, min_distance, workers, progress)]  # empty arrays
        while kept < limit and done < len(rows_wanted):
            take = rows_wanted[done:done + (limit - kept) + 2]  # 2 spare: a skipped row rarely costs a round
            parts.append(_parse_rows(path, f, take, max_atoms, min_distance, workers, progress))
            kept += len(parts[-1].rows)
            done += len(take)
        out.append(_merge(parts))
    return out


def _merge(parts: list[_ParsedFile]) -> _ParsedFile:
    """One _ParsedFile of a file parsed in consecutive pieces of rows; ``complete`` False."""
    keys = ("num_atoms", "z", "frac", "lengths", "angles", "ids", "rows", "skip_rows", "skip_reasons")
    return _ParsedFile(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in keys},
                       cif_rows=parts[0].cif_rows, n_rows=parts[0].n_rows, complete=False)


def _assemble(protocol: str, picks: list[tuple[_ParsedFile, np.ndarray]],
              skips: list[tuple[_ParsedFile, np.ndarray | None, bool]]) -> Crystals:
    """Concatenate the picked crystals of each file; count the skipped rows selected (None = all)."""
    z, frac, lengths, angles, ids = [], [], [], [], []
    for parsed, pos in picks:
        zz, ff = parsed.items(pos)
        z += zz
        frac += ff
        lengths.append(parsed.lengths[pos])
        angles.append(parsed.angles[pos])
        ids += parsed.ids[pos].tolist()
    skipped: Counter = Counter()
    for parsed, sel, partial in skips:
        for r in (parsed.skip_reasons if sel is None else parsed.skip_reasons[sel]).tolist():
            skipped[EXPECTED_MISSING if partial and r == "missing_cif" else r] += 1
    return Crystals(z, frac, np.concatenate(lengths).reshape(-1, 3), np.concatenate(angles).reshape(-1, 3),
                    ids, protocol, dict(skipped))


# ----------------------------------------------------------------------------- tensors for the model
def pad_batch(items: Sequence[CrystalItem], max_atoms: int | None = None
              ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Collate crystals to padded tensors.

    Returns z (B, N) long with 0 = padding, frac (B, N, 3) float32 (0 at padding),
    lattice (B, 6) float32 = [lengths / n^(1/3) in Angstrom, angles in degrees], mask (B, N) bool.
    N = max_atoms or the largest crystal in the batch.
    """
    import torch
    n_max = max_atoms or max(len(it.z) for it in items)
    b = len(items)
    z = torch.zeros(b, n_max, dtype=torch.long)
    frac = torch.zeros(b, n_max, 3)
    lattice = torch.zeros(b, 6)
    for i, it in enumerate(items):
        n = len(it.z)
        if n > n_max:
            raise DataError(f"crystal {it.id!r} has {n} atoms, more than max_atoms={n_max}")
        z[i, :n] = torch.as_tensor(np.asarray(it.z), dtype=torch.long)
        frac[i, :n] = torch.as_tensor(np.asarray(it.frac), dtype=torch.float32)
        lattice[i, :3] = torch.as_tensor(np.asarray(it.lengths) / np.cbrt(n), dtype=torch.float32)
        lattice[i, 3:] = torch.as_tensor(np.asarray(it.angles), dtype=torch.float32)
    return z, frac, lattice, z > 0


def unpad_batch(z: "torch.Tensor", frac: "torch.Tensor", lattice: "torch.Tensor", mask: "torch.Tensor",
                ids: Sequence[str] | None = None) -> list[CrystalItem]:
    """Inverse of :func:`pad_batch`: lengths are scaled back by n^(1/3) (Angstrom)."""
    out = []
    for i in range(z.shape[0]):
        m = mask[i].bool().cpu().numpy()
        n = int(m.sum())
        lat = lattice[i].detach().double().cpu().numpy()
        out.append(CrystalItem(z[i].cpu().numpy()[m].astype(np.int64), frac[i].detach().double().cpu().numpy()[m],
                               lat[:3] * np.cbrt(max(n, 1)), lat[3:], ids[i] if ids else f"sample{i}"))
    return out


def random_translate(frac: "torch.Tensor", mask: "torch.Tensor",
                     generator: "torch.Generator | None" = None) -> "torch.Tensor":
    """Shift every crystal's fractional coordinates (B, N, 3) by one uniform vector, modulo 1.

    A periodic crystal has no preferred origin; padding (mask False) stays at 0.
    """
    import torch
    shift = torch.rand(frac.shape[0], 1, 3, generator=generator, dtype=frac.dtype).to(frac.device)  # CPU generator
    out = torch.remainder(frac + shift, 1.0)
    return torch.where(mask.unsqueeze(-1), out, torch.zeros_like(out))


def atom_count_distribution(crystals: Crystals, max_atoms: int | None = None) -> np.ndarray:
    """(max_atoms + 1,) probabilities p[n] of a training crystal having n atoms (p[0] = 0)."""
    counts = crystals.num_atoms
    hist = np.bincount(counts, minlength=(max_atoms or int(counts.max())) + 1).astype(np.float64)
    return hist / hist.sum()


def sample_atom_counts(dist: np.ndarray, num: int, generator: "torch.Generator | None" = None) -> "torch.Tensor":
    """(num,) long atom counts drawn from :func:`atom_count_distribution`."""
    import torch
    return torch.multinomial(torch.as_tensor(dist, dtype=torch.float64), num, replacement=True,
                             generator=generator)
