"""Physics checks of molecules (``unite-sci relax``, ``evaluate ... data.physics=true``; the hook is
:mod:`unite_sci.physics`): PoseBusters' molecule checks and the strain a force field releases.

A molecule is ``(z, pos)``: atomic numbers (n,) and coordinates (n, 3) in Angstrom, explicit hydrogens.

* **PoseBusters** (Buttenschoen et al. 2024, the ``posebusters`` package, its ``mol`` configuration):
  sanitisation, InChI, connectivity, radicals, bond lengths and angles against RDKit's distance-geometry
  bounds, internal clashes, flat aromatic rings and double bonds, non-flat saturated rings, and the
  internal energy against 50 ETKDG conformers of the same molecule. PoseBusters needs bonds: they are the
  ones the ADiT validity verdict perceived (:func:`.render.perceived_3d`), hydrogens kept and unsanitised,
  so its "Sanitization" check judges exactly the graph behind ``valid_with_h``. A molecule without
  perceived bonds fails every check. The package's ``mol.yml`` lists the energy-ratio module twice, the
  first time without a verdict; that copy is dropped here (same verdicts, half the cost).
* **Strain** (:mod:`.forcefield`): energy released when the geometry is relaxed (kcal/mol) and the RMSD of
  the move (Angstrom). Medians over the relaxed molecules; the shares under ``strain_under`` and
  ``rmsd_under`` count over all samples (a molecule that cannot be relaxed is not under).
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unite_sci.parallel import parallel_map
from unite_sci.physics import RELAX_CSV, read_rows, relaxed_folder, write_rows
from unite_sci.reduce import percent

from . import bonds as _bonds
from . import io as qio
from .bonds import quiet_toolkits, silence_toolkits
from .forcefield import RelaxResult, RelaxSettings, failed, one_blas_thread, label, optimiser_label, relax_molecule

PROGRESS_NPZ = "relax_progress.npz"  # relaxed coordinates of the rows of relax.csv, for resuming
CHUNK = 256  # molecules relaxed between two saves of relax.csv (each chunk starts the worker pool: ~6 s)

# PoseBusters' output column -> our per-sample column (order of the mol configuration)
CHECKS = {
    "mol_pred_loaded": "loaded", "sanitization": "sanitization", "inchi_convertible": "inchi_convertible",
    "all_atoms_connected": "all_atoms_connected", "no_radicals": "no_radicals", "bond_lengths": "bond_lengths",
    "bond_angles": "bond_angles", "internal_steric_clash": "internal_steric_clash",
    "aromatic_ring_flatness": "aromatic_ring_flatness", "non-aromatic_ring_non-flatness": "nonaromatic_ring_nonflatness",
    "double_bond_flatness": "double_bond_flatness", "internal_energy": "internal_energy",
}  # fmt: skip


def posebusters_name() -> str:
    return f"PoseBusters {md.version('posebusters')} mol"


def strain_name(force_field: str) -> str:
    return {"mmff94": "MMFF94", "gfn2_xtb": "GFN2-xTB"}[str(force_field)] + " strain"


_BUSTER: Any = None


def _buster() -> Any:
    """One PoseBusters per process, its ``mol`` configuration without the duplicated energy module."""
    global _BUSTER
    if _BUSTER is None:
        import logging

        import yaml
        from posebusters import PoseBusters

        logging.getLogger("posebusters").setLevel(logging.CRITICAL)  # its failures are verdicts here
        cfg_path = Path(__import__("posebusters").__file__).parent / "config" / "mol.yml"
        config = yaml.safe_load(cfg_path.read_text())
        config["modules"] = [m for m in config["modules"] if m.get("chosen_binary_test_output")]
        _BUSTER = PoseBusters(config=config, max_workers=0)
    return _BUSTER


def posebusters_verdicts(z: object, pos: object) -> dict[str, bool]:
    """PoseBusters' ``mol`` checks of one molecule (see the module docstring); every check False when no
    bonds could be perceived."""
    from .render import perceived_3d

    mol = perceived_3d(z, pos, sanitize=False)
    if mol is None:
        return {c: False for c in CHECKS.values()}
    with one_blas_thread():
        df = _buster().bust([mol], None, None, full_report=False)
    row = df.iloc[0].to_dict()
    return {ours: bool(row.get(theirs) is True or row.get(theirs) == 1.0) for theirs, ours in CHECKS.items()}


def _bust_item(item: tuple) -> dict[str, bool]:
    return posebusters_verdicts(*item)


class _Relax:
    """Picklable ``(z, pos) -> RelaxResult`` with the settings."""

    def __init__(self, settings: RelaxSettings):
        self.settings = settings

    def __call__(self, item: tuple) -> RelaxResult:
        return relax_molecule(item[0], item[1], self.settings)


def _map(fn: Callable[[tuple], Any], items: list[tuple], workers: int, time_limit_s: float, desc: str,
         progress: bool) -> list[tuple[Any, str]]:
    """``(value, error)`` per item over the shared pool; toolkits silenced in every process. Always in worker
    processes (``isolate``): an item can spend seconds in one RDKit or force-field call, which in this
    process would hold off a Ctrl-C or SIGTERM until it returned."""
    with quiet_toolkits():
        outs = parallel_map(fn, items, workers, time_limit_s, desc=desc, progress=progress, isolate=True,
                            initializer=silence_toolkits, initargs=(_bonds.RDKIT_LOG_LEVEL,))
    return [(o.value, o.error or "") for o in outs]


def input_key(z: np.ndarray, pos: np.ndarray) -> str:
    """Short hash of one input molecule: a resumed relaxation keeps a row only for the same molecule."""
    h = hashlib.sha1(np.asarray(z, np.int64).tobytes() + np.asarray(pos, np.float64).tobytes())
    return h.hexdigest()[:16]


def relax_all(samples: Sequence[tuple[np.ndarray, np.ndarray]], settings: RelaxSettings, *, workers: int,
              time_limit_s: float, progress: bool, out_dir: Path | None = None) -> tuple[list[dict], list[np.ndarray]]:
    """Relax every molecule: (rows of relax.csv, relaxed coordinates). With ``out_dir``, rows already in
    its relax.csv for the same input molecules are kept, and progress is saved every ``CHUNK`` molecules."""
    keys = [input_key(z, p) for z, p in samples]
    rows: list[dict] = []
    relaxed: list[np.ndarray] = []
    if out_dir is not None and (out_dir / PROGRESS_NPZ).is_file():
        old = read_rows(out_dir / RELAX_CSV)
        try:
            _, old_pos = qio.read_npz(out_dir / PROGRESS_NPZ)
        except Exception:  # a damaged progress file: start again
            old_pos = []
        for r, p, key in zip(old, old_pos, keys):
            if len(old) != len(old_pos) or r.get("input_key") != key or r.get("force_field") != settings.force_field:
                break
            rows.append(r)
            relaxed.append(p)
    for start in range(len(rows), len(samples), CHUNK):
        part = list(range(start, min(start + CHUNK, len(samples))))
        items = [(samples[i][0], samples[i][1]) for i in part]
        done = _map(_Relax(settings), items, workers, time_limit_s, f"relax {label(settings.force_field)}", progress)
        for i, (res, why) in zip(part, done):
            if res is None:
                res = failed(samples[i][1], why)
            rows.append({"index": i, "n_atoms": len(samples[i][0]), "force_field": settings.force_field,
                         "input_key": keys[i], **res.row()})
            relaxed.append(res.pos)
        if out_dir is not None:
            write_rows(out_dir / RELAX_CSV, rows)
            qio.write_npz(out_dir / PROGRESS_NPZ, [np.asarray(s[0]) for s in samples[:len(rows)]], relaxed)
    return rows, relaxed


def relax_summary(rows: list[dict], settings: RelaxSettings) -> dict[str, Any]:
    """What relax_meta.json records: the protocol and the counts."""
    errors = [r for r in rows if r.get("error")]
    return {"tool": label(settings.force_field), "optimiser": optimiser_label(),
            "max_steps": settings.max_steps, "fmax_kcal_mol_A": settings.fmax,
            "bonds": "perceived by the ADiT validity route (OpenBabel, given atom order, RDKit sanitised with H)",
            "relaxed": len(rows) - len(errors), "errors": len(errors),
            "converged": sum(_true(r.get("converged")) for r in rows)}


def _true(v: object) -> bool:
    return v is True or str(v).lower() == "true"


def _float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def strain_metrics(rows: list[dict], prefix: str, strain_under: float, rmsd_under: float) -> dict[str, float]:
    """Median strain (kcal/mol) and move RMSD (Angstrom) over the relaxed molecules; shares (percent) of all."""
    ok = [r for r in rows if not r.get("error")]
    strain = np.array([_float(r["strain_kcal_mol"]) for r in ok])
    rmsd = np.array([_float(r["rmsd_A"]) for r in ok])
    n = len(rows)
    return {f"{prefix}/relaxed": percent(len(ok), n),
            f"{prefix}/converged": percent(sum(_true(r.get("converged")) for r in rows), n),
            f"{prefix}/median_kcal_mol": float(np.median(strain)) if len(ok) else float("nan"),
            f"{prefix}/under_{strain_under:g}_kcal_mol": percent(int((strain < strain_under).sum()), n),
            f"{prefix}/median_rmsd_A": float(np.median(rmsd)) if len(ok) else float("nan"),
            f"{prefix}/rmsd_under_{rmsd_under:g}_A": percent(int((rmsd < rmsd_under).sum()), n)}


def physics_report(samples: Sequence[tuple[np.ndarray, np.ndarray]], source: Path, settings: RelaxSettings, *,
                   strain_under: float, rmsd_under: float, workers: int, time_limit_s: float,
                   progress: bool = True) -> tuple[dict[str, Any], list[dict]]:
    """PoseBusters pass rates (percent, per check and all) of the samples as read, and the strain: from
    the relax.csv beside them when ``source`` was written by ``relax``, else relaxed here (not saved)."""
    import time

    folder = relaxed_folder(source)
    t0 = time.time()
    if folder is not None:
        rows = read_rows(folder / RELAX_CSV)
        if len(rows) != len(samples):
            from unite_sci.errors import DataError

            raise DataError(f"{folder / RELAX_CSV} has {len(rows)} rows for {len(samples)} samples")
    else:
        rows, _ = relax_all(samples, settings, workers=workers, time_limit_s=time_limit_s, progress=progress)
    relax_s = time.time() - t0
    t0 = time.time()
    items = [(z, p) for z, p in samples]
    busted = _map(_bust_item, items, workers, time_limit_s, "PoseBusters", progress)
    bust_s = time.time() - t0
    verdicts = [v if v is not None else {c: False for c in CHECKS.values()} for v, _ in busted]
    n = len(samples)
    pb, ss = posebusters_name(), strain_name(rows[0].get("force_field", settings.force_field) if rows else
                                             settings.force_field)
    metrics: dict[str, Any] = {f"{pb}/{c}": percent(sum(v[c] for v in verdicts), n) for c in CHECKS.values()}
    metrics[f"{pb}/all"] = percent(sum(all(v.values()) for v in verdicts), n)
    metrics[f"{pb}/geometry"] = "relaxed (relax.csv beside the samples)" if folder is not None else "as given"
    metrics[f"{pb}/unjudged"] = sum(bool(why) for _, why in busted)  # failed or timed out: counted as failing
    metrics[f"{pb}/s_per_molecule"] = bust_s / max(n, 1)
    metrics.update(strain_metrics(rows, ss, strain_under, rmsd_under))
    metrics[f"{ss}/protocol"] = (f"{label(str(rows[0]['force_field'])) if rows else label(settings.force_field)}, "
                                 f"{optimiser_label()}, fmax {settings.fmax:g} kcal/mol/A, at most "
                                 f"{settings.max_steps} steps; strain = energy before - after")
    metrics[f"{ss}/s_per_molecule"] = relax_s / max(n, 1) if folder is None else float("nan")
    per_sample = []
    for v, r, (_, why) in zip(verdicts, rows, busted):
        per_sample.append({**{f"pb_{c}": ok for c, ok in v.items()}, "pb_all": all(v.values()),
                           "pb_error": why, "strain_kcal_mol": _float(r.get("strain_kcal_mol")),
                           "relax_rmsd_A": _float(r.get("rmsd_A")), "relax_converged": _true(r.get("converged")),
                           "relax_error": r.get("error", "")})
    return metrics, per_sample
