"""Space groups of crystals: what a materials scientist checks after validity.

A generator that places atoms almost, but not exactly, on symmetric positions produces cells that pass
every validity check and still look like noise to a crystallographer: most of them land in P1. This module
assigns each crystal its space group with pymatgen's ``SpacegroupAnalyzer`` (spglib underneath) at a stated
tolerance and compares the distribution over valid samples with the training crystals'.

Tolerance: ``symprec = 0.1`` Angstrom and ``angle_tolerance = 5`` degrees, the loose setting generative-model
papers use for generated cells (DiffCSP++, MatterGen); pymatgen's default 0.01 A would call nearly every
generated cell P1. Both are arguments.

Metrics (percentages over valid samples, distances between normalised histograms):
- ``space_group_p1_pct`` (and ``space_group_ref_p1_pct`` for the reference), the share in P1 (number 1);
- ``space_group_tv``: total-variation distance between the 230-bin histograms, 0 = same, 1 = disjoint;
- ``crystal_system_tv``: the same over the 7 crystal systems (coarser, less noisy for 1,000 samples);
- ``space_group_distinct``: how many different groups the valid samples use.
"""
from __future__ import annotations

import hashlib
import sys
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unite_sci.files import atomic_write
from unite_sci.parallel import parallel_map
from unite_sci.reduce import percent

from .structures import build_structure, to_arrays

SYMPREC = 0.1          # Angstrom
ANGLE_TOLERANCE = 5.0  # degrees
# First space-group number of each crystal system (International Tables), for the coarse histogram.
SYSTEM_STARTS = (1, 3, 16, 75, 143, 168, 195)
SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
_CACHE_FORMAT = 1
NOTICE_MIN_ITEMS = 500  # about a second of spglib or more: a one-line notice says so before it starts


def space_group_task(item: Any, symprec: float = SYMPREC, angle_tolerance: float = ANGLE_TOLERANCE) -> int:
    """Space-group number 1..230 of one crystal (any form ``to_arrays`` accepts); 0 if it cannot be built
    or spglib finds no cell."""
    a = to_arrays(item)
    if isinstance(a, str):
        return 0
    s, _ = build_structure(a)
    if s is None:
        return 0
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    try:
        return int(SpacegroupAnalyzer(s, symprec=symprec, angle_tolerance=angle_tolerance).get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib refuses degenerate cells; that crystal has no group
        return 0


def space_groups(crystals: Sequence[Any], workers: int | None = 1, time_limit_s: float | None = None, *,
                 symprec: float = SYMPREC, angle_tolerance: float = ANGLE_TOLERANCE,
                 progress: bool = True) -> np.ndarray:
    """Space-group numbers (n,) int64, 0 where none could be assigned (or the item timed out)."""
    outs = parallel_map(partial(space_group_task, symprec=symprec, angle_tolerance=angle_tolerance),
                        list(crystals), workers, time_limit_s, desc="space groups", progress=progress)
    return np.array([o.value or 0 for o in outs], dtype=np.int64)


def reference_space_groups(crystals: Sequence[Any], cache_dir: str | Path | None, workers: int | None = 1,
                           time_limit_s: float | None = None, *, symprec: float = SYMPREC,
                           angle_tolerance: float = ANGLE_TOLERANCE, progress: bool = True) -> np.ndarray:
    """:func:`space_groups` of a reference set, cached under ``cache_dir`` by the content of the crystals
    and the tolerances (10,000 training crystals take minutes; ``cache_dir=None`` disables the cache)."""
    h = hashlib.sha1(f"space groups {_CACHE_FORMAT} {symprec} {angle_tolerance}".encode())
    for x in crystals:
        a = to_arrays(x)
        h.update(a.encode() if isinstance(a, str) else b"".join(np.ascontiguousarray(v).tobytes() for v in a))
    path = None if cache_dir is None else Path(cache_dir) / f"space_groups-{h.hexdigest()[:16]}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    if len(crystals) >= NOTICE_MIN_ITEMS:  # minutes for MP-20's training set: say why the wait, once
        where = f", cached in {path}" if path is not None else ""
        print(f"note: finding the space groups of {len(crystals):,} reference crystals (once{where})",
              file=sys.stderr, flush=True)
    sg = space_groups(crystals, workers, time_limit_s, symprec=symprec, angle_tolerance=angle_tolerance,
                      progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: np.save(fh, sg), binary=True)
    return sg


def crystal_system(sg: np.ndarray) -> np.ndarray:
    """Space-group numbers (n,) -> crystal-system index 0..6 (triclinic .. cubic); -1 for 0 (none)."""
    sg = np.asarray(sg)
    return np.where(sg > 0, np.searchsorted(SYSTEM_STARTS, sg, side="right") - 1, -1)


def _tv(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Total-variation distance between the histograms of two integer arrays over 0..bins-1."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    pa = np.bincount(a, minlength=bins) / len(a)
    pb = np.bincount(b, minlength=bins) / len(b)
    return float(0.5 * np.abs(pa - pb).sum())


def space_group_metrics(sg: np.ndarray, valid: np.ndarray, ref_sg: np.ndarray) -> dict[str, float]:
    """Compare the groups of the valid samples with a reference's (both from :func:`space_groups`).

    Crystals without a group (0) are left out on both sides; percentages are of those with one.
    """
    gen = sg[np.asarray(valid, bool) & (sg > 0)]
    ref = ref_sg[ref_sg > 0]
    return {
        "space_group_p1_pct": percent(int((gen == 1).sum()), len(gen)),
        "space_group_ref_p1_pct": percent(int((ref == 1).sum()), len(ref)),
        "space_group_tv": _tv(gen, ref, 231),
        "crystal_system_tv": _tv(crystal_system(gen), crystal_system(ref), 7),
        "space_group_distinct": int(len(np.unique(gen))),
    }


def plot_space_groups(sg: np.ndarray, valid: np.ndarray, ref_sg: np.ndarray, path: str | Path,
                      top: int = 20) -> None:
    """Bar chart: share of the ``top`` most common reference groups (and P1) among valid samples and the
    reference, plus the crystal systems, as ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gen = sg[np.asarray(valid, bool) & (sg > 0)]
    ref = ref_sg[ref_sg > 0]
    counts = np.bincount(ref, minlength=231)
    groups = sorted(set(np.argsort(-counts)[:top].tolist()) | {1})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(groups))
    for off, arr, label in ((-0.2, gen, f"generated, valid ({len(gen)})"), (0.2, ref, f"reference ({len(ref)})")):
        share = [100.0 * (arr == g).mean() if len(arr) else 0.0 for g in groups]
        ax1.bar(x + off, share, width=0.4, label=label)
    ax1.set_xticks(x, [str(g) for g in groups], fontsize=7)
    ax1.set_xlabel(f"space-group number (symprec {SYMPREC} A, angle tolerance {ANGLE_TOLERANCE} deg)")
    ax1.set_ylabel("% of crystals")
    ax1.legend(fontsize=8)
    xs = np.arange(7)
    for off, arr in ((-0.2, gen), (0.2, ref)):
        cs = crystal_system(arr)
        ax2.bar(xs + off, [100.0 * (cs == k).mean() if len(cs) else 0.0 for k in range(7)], width=0.4)
    ax2.set_xticks(xs, [s[:5] for s in SYSTEMS], rotation=45, fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=110), binary=True)
    plt.close(fig)
