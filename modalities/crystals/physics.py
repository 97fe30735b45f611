"""Crystal physics, for every crystal data set: relaxation with CHGNet, energy above the hull, S.U.N.

``relax_task`` relaxes one crystal with CHGNet's own optimiser (``chgnet.model.StructOptimizer``: ASE's FIRE
by default, cell and positions, until the largest force is below ``fmax`` eV/A or ``steps`` steps), in a
worker process that loads the pretrained CHGNet once (the wheel ships its weights: nothing is downloaded).
``stability_metrics`` turns the relaxed energies into energies above the hull (``hull.py``) and counts
stable (E_hull <= 0), metastable (<= 0.1 eV/atom), S.U.N. and M.S.U.N. crystals: stable (or metastable),
unique among the samples and novel against the training crystals, both by pymatgen's StructureMatcher
with the tolerances of the generation metrics. Energies are eV/atom, distances Angstrom.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unite_sci.parallel import parallel_map

from .hull import METASTABLE, PROTOCOL, STABLE, Hull, References
from .structures import Arrays, build_structure, to_arrays

_MODEL = None  # CHGNet, once per process


@dataclass(frozen=True)
class RelaxSettings:
    optimizer: str = "FIRE"        # an ASE optimiser name CHGNet's StructOptimizer takes (FIRE, BFGS, LBFGS...)
    fmax: float = 0.1              # eV/A: converged when the largest force (and cell stress) is below it
    steps: int = 500               # optimiser steps at most
    relax_cell: bool = True        # lattice too (CHGNet's FrechetCellFilter), as the field's pre-relaxation


def chgnet():
    """The pretrained CHGNet of the installed wheel, on the CPU, loaded once per process."""
    global _MODEL
    if _MODEL is None:
        import torch
        from chgnet.model import CHGNet

        torch.set_num_threads(1)  # one process per core (unite_sci/parallel.py)
        _MODEL = CHGNet.load(verbose=False, use_device="cpu")
    return _MODEL


def chgnet_version() -> str:
    from importlib.metadata import version

    return f"CHGNet {version('chgnet')} (model {getattr(chgnet(), 'version', '?')})"


def _arrays_of(structure) -> Arrays:
    return (np.array([s.specie.Z for s in structure], dtype=np.int64), np.mod(structure.frac_coords, 1.0),
            np.array(structure.lattice.abc), np.array(structure.lattice.angles))


def move_rmsd(before: Arrays, after: Arrays) -> float:
    """RMS displacement (A) of the atoms from ``before`` to ``after``: fractional moves taken to the nearest
    image, measured in the relaxed lattice (the cell's own change is not an atom move)."""
    from pymatgen.core import Lattice

    d = after[1] - before[1]
    d -= np.round(d)
    cart = d @ Lattice.from_parameters(*after[2], *after[3]).matrix
    return float(np.sqrt((cart ** 2).sum(axis=1).mean()))


def relax_task(item: Any, settings: RelaxSettings = RelaxSettings()) -> dict[str, Any]:
    """Relax one crystal (any form ``to_arrays`` takes): a row of relax.csv plus the relaxed arrays under
    ``"arrays"``. Raises with a one-line reason for a crystal that cannot be built or relaxed."""
    import warnings

    from chgnet.model import StructOptimizer

    a = to_arrays(item)
    if isinstance(a, str):
        raise ValueError(a)
    structure, why = build_structure(a)
    if structure is None:
        raise ValueError(why)
    model = chgnet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CHGNet's and ASE's notices, once per crystal otherwise
        e0 = float(model.predict_structure(structure)["e"])
        result = StructOptimizer(model=model, optimizer_class=settings.optimizer).relax(
            structure, fmax=settings.fmax, steps=settings.steps, relax_cell=settings.relax_cell, verbose=False)
    traj, final = result["trajectory"], result["final_structure"]
    n = len(structure)
    forces = np.asarray(traj.forces[-1]) if traj.forces else np.zeros((n, 3))
    fmax_final = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
    after = _arrays_of(final)
    e1 = float(traj.energies[-1]) / n if traj.energies else e0
    return {"energy_before_ev_per_atom": round(e0, 6), "energy_after_ev_per_atom": round(e1, 6),
            "rmsd_a": round(move_rmsd(a, after), 5), "steps": max(len(traj.energies) - 1, 0),
            # the optimiser's own verdict (its forces include the cell's): it stopped before the step limit
            "converged": bool(len(traj.energies) - 1 < settings.steps), "fmax_final_ev_per_a": round(fmax_final, 5),
            "arrays": after}


def static_energies(items: Sequence[Any], batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """CHGNet energies (eV/atom) of crystals as they are, batched, in this process; NaN where one cannot
    be built."""
    from tqdm import tqdm

    structures = [build_structure(a)[0] if not isinstance(a := to_arrays(x), str) else None for x in items]
    ok = [i for i, s in enumerate(structures) if s is not None]
    out = np.full(len(items), np.nan)
    model = chgnet()
    for k in tqdm(range(0, len(ok), batch_size), desc="CHGNet energies", disable=not progress, leave=False):
        idx = ok[k:k + batch_size]
        preds = model.predict_structure([structures[i] for i in idx], batch_size=batch_size)
        for i, p in zip(idx, preds if isinstance(preds, list) else [preds]):
            out[i] = float(p["e"])
    return out


def relax_all(items: Sequence[Any], settings: RelaxSettings, workers: int, time_limit_s: float,
              progress: bool = True) -> list[dict[str, Any]]:
    """:func:`relax_task` over crystals in worker processes; a crystal that fails or runs out of time gets
    a row with its ``error`` and its input arrays (unrelaxed), never a crash of the batch."""
    outs = parallel_map(partial(relax_task, settings=settings), list(items), workers, time_limit_s,
                        desc="relax (CHGNet)", progress=progress, chunksize=1)
    rows = []
    for x, o in zip(items, outs):
        if o.value is not None:
            rows.append({**o.value, "seconds": round(o.seconds, 2), "error": ""})
        else:
            a = to_arrays(x)
            rows.append({"energy_before_ev_per_atom": float("nan"), "energy_after_ev_per_atom": float("nan"),
                         "rmsd_a": float("nan"), "steps": 0, "converged": False,
                         "fmax_final_ev_per_a": float("nan"), "seconds": round(o.seconds, 2),
                         "error": (o.error or "failed").replace("\n", " ")[:200],
                         "arrays": a if not isinstance(a, str) else None})
    return rows


def e_above_hull(z_list: Sequence[np.ndarray], energies: np.ndarray, refs: References, hull: Hull
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(formation energies, energies above the hull), both (n,) eV/atom, NaN where unknown."""
    ef = np.array([refs.formation_energy(z, e) if z is not None and len(z) else np.nan
                   for z, e in zip(z_list, energies)])
    eh = np.full(len(ef), np.nan)
    for i, (z, e) in enumerate(zip(z_list, ef)):
        if np.isfinite(e):
            zs, counts = np.unique(z, return_counts=True)
            eh[i] = hull.e_above_hull(dict(zip(zs.tolist(), counts.tolist())), float(e))
    return ef, eh


def stability_metrics(e_hull: np.ndarray, unique: np.ndarray, novel: np.ndarray) -> dict[str, float]:
    """Shares (percent of all samples, NaN counted as unstable) of stable, metastable, S.U.N., M.S.U.N."""
    n = max(len(e_hull), 1)
    finite = np.isfinite(e_hull)
    stable = finite & (np.nan_to_num(e_hull, nan=np.inf) <= STABLE)
    meta = finite & (np.nan_to_num(e_hull, nan=np.inf) <= METASTABLE)
    u, nv = np.asarray(unique, bool), np.asarray(novel, bool)
    return {"stable_pct": round(100 * stable.sum() / n, 2), "metastable_pct": round(100 * meta.sum() / n, 2),
            "sun_pct": round(100 * (stable & u & nv).sum() / n, 2),
            "msun_pct": round(100 * (meta & u & nv).sum() / n, 2),
            "e_hull_median": round(float(np.nanmedian(e_hull)), 4) if finite.any() else float("nan"),
            "e_hull_unknown": int((~finite).sum())}


def plot_e_hull(series: dict[str, np.ndarray], path: Path) -> Path:
    """Histogram of energies above the hull (eV/atom), one series per label, thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(-0.3, 1.5, 46)
    for label, e in series.items():
        e = np.asarray(e, dtype=float)
        e = e[np.isfinite(e)]
        if len(e):
            ax.hist(np.clip(e, bins[0], bins[-1]), bins=bins, alpha=0.55, density=True,
                    label=f"{label} (n={len(e)}, median {np.median(e):.3f})")
    for x, name in ((STABLE, "stable"), (METASTABLE, "metastable")):
        ax.axvline(x, color="k", lw=0.8, ls="--")
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=7, va="top", rotation=90)
    ax.set_xlabel(f"energy above hull, eV/atom ({PROTOCOL}; clipped to [-0.3, 1.5])")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_progress(path: Path) -> dict[int, dict[str, Any]]:
    """Rows already relaxed (resume): ``relax_progress.jsonl``, one JSON line per finished crystal; a line
    cut by a kill is ignored."""
    done: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("arrays") is not None:
                r["arrays"] = tuple(np.asarray(v) for v in r["arrays"])
            done[int(r["index"])] = r
    return done


def append_progress(path: Path, rows: list[dict[str, Any]]) -> None:
    import os

    with open(path, "a") as fh:
        for r in rows:
            a = r.get("arrays")
            rec = {**r, "arrays": None if a is None else [np.asarray(v).tolist() for v in a]}
            fh.write(json.dumps(rec, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
