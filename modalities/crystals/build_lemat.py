"""Build the "LeMat" extra training file of the extended MP-20 protocol (``data.extra_train=lemat``).

Input: the LeMat-Bulk samples ``lemat_{mp,alexandria,oqmd,aflow}.tar.gz`` (about 2,500 CIFs each, drawn at
random from each database, Apache-2.0). Kept: every CIF that the MP-20 loader itself accepts (``parse_cif``:
at most 20 atoms, ordered, atoms at least 0.5 A apart), minus

- Materials Project ids found in any MP-20 file shipped here (test, val or the partial train list);
- crystals that ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)`` matches to an MP-20 test crystal (no
  test crystal leaks into training) or to a training crystal of the protocol (no double weight);
- repeats among the LeMat crystals themselves (the first one is kept, in database order).

Output: ``lemat/train.csv.gz`` in the CDVAE layout (``material_id``, ``source``, ``pretty_formula``,
``elements``, ``cif`` with the database's CIF text unchanged) and its ``SHA256SUMS``. The file ships with
the package beside the MP-20 copy (offline/PROVENANCE.md); this module is how it was made::

    python -m unite_sci_modalities.crystals.build_lemat --source ../shared/data/crystals --out modalities/crystals/offline/lemat
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import tarfile
import warnings
from collections import defaultdict
from pathlib import Path


from unite_sci.errors import DataError
from unite_sci.files import atomic_write

from ..atoms import MAX_Z
from . import data as cdata
from .metrics import MATCHER

DATABASES = ("mp", "alexandria", "oqmd", "aflow")  # the order decides which repeat is kept


def read_tarball(path: Path) -> list[tuple[str, str]]:
    """(material id, CIF text) of every ``*.cif`` member, in name order; the id is the file stem."""
    out = []
    with tarfile.open(path, "r:gz") as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.isfile() and m.name.endswith(".cif"):
                out.append((Path(m.name).stem, tar.extractfile(m).read().decode("utf-8")))
    return out


def _mp_id(stem: str) -> str:
    """``mp_mp-1001835`` -> ``mp-1001835``; other databases keep their stem."""
    return stem.split("_", 1)[1] if stem.startswith("mp_") else stem


def _structures(split: cdata.Crystals) -> dict[str, list]:
    """Structures of a split grouped by reduced formula."""
    out = defaultdict(list)
    for s in split.structures():
        out[s.composition.reduced_formula].append(s)
    return out


def build(source: Path, out: Path, workers: int = 1, references: dict[str, cdata.Crystals] | None = None
          ) -> dict[str, int]:
    """Write ``out/train.csv.gz`` and ``out/SHA256SUMS``; return the counts of kept and dropped CIFs.

    references: {"test": ..., "train": ...} crystals to drop matches of; None: the shipped MP-20 offline
    protocol's test and training splits.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from tqdm import tqdm

    missing = [db for db in DATABASES if not (source / f"lemat_{db}.tar.gz").is_file()]
    if missing:
        raise DataError(f"{source}: no lemat_{missing[0]}.tar.gz (the LeMat-Bulk samples)")
    mp_root = cdata.SHIPPED_ROOT / "mp_20"
    known_ids = set()
    for name in ("test", "val", "train_partial"):
        known_ids |= {r["material_id"] for r in cdata.read_rows(mp_root / f"{name}.csv.gz")}
    if references is None:
        references = {split: cdata.load_split("mp20", split, workers=workers) for split in ("test", "train")}
    refs = {split: _structures(crystals) for split, crystals in references.items()}
    matcher = StructureMatcher(**MATCHER)
    kept: dict[str, list] = defaultdict(list)
    rows, counts = [], defaultdict(int)
    for db in DATABASES:
        for stem, cif in tqdm(read_tarball(source / f"lemat_{db}.tar.gz"), desc=f"LeMat {db}", unit="CIF"):
            mid = _mp_id(stem)
            if mid in known_ids:
                counts["mp20_id"] += 1
                continue
            parsed = cdata.parse_cif(cif, 20, 0.5, MAX_Z)
            if isinstance(parsed, str):
                counts[parsed] += 1
                continue
            z, frac, lengths, angles = parsed
            s = cdata.to_structure(z, frac, lengths, angles)
            formula = s.composition.reduced_formula
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hit = next((name for name, pool in (("test", refs["test"]), ("train", refs["train"]),
                                                    ("repeat", kept))
                            if any(matcher.fit(s, r) for r in pool.get(formula, ()))), None)
            if hit:
                counts[f"matches_{hit}"] += 1
                continue
            kept[formula].append(s)
            elements = sorted(el.symbol for el in s.composition)
            rows.append({"material_id": mid, "source": f"LeMat-Bulk/{db}", "pretty_formula": formula,
                         "elements": str(elements), "cif": cif})
    counts["kept"] = len(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["material_id", "source", "pretty_formula", "elements", "cif"])
    writer.writeheader()
    writer.writerows(rows)
    blob = gzip.compress(buf.getvalue().encode("utf-8"), compresslevel=9, mtime=0)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "train.csv.gz", lambda f: f.write(blob), binary=True)
    atomic_write(out / cdata.CHECKSUMS, lambda f: f.write(f"{hashlib.sha256(blob).hexdigest()}  train.csv.gz\n"),
                 binary=False)
    return dict(counts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, type=Path, help="folder holding lemat_{mp,alexandria,oqmd,aflow}.tar.gz")
    p.add_argument("--out", required=True, type=Path, help="folder to write train.csv.gz and SHA256SUMS into")
    p.add_argument("--workers", type=int, default=1, help="processes for parsing the MP-20 references")
    args = p.parse_args(argv)
    counts = build(args.source, args.out, args.workers)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), f"-> {args.out / 'train.csv.gz'}")


if __name__ == "__main__":
    main()
