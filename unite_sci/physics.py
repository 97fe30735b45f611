"""Physics checks of samples on disk: relax them with a named tool, score the relaxed samples.

A modality with physics implements two adapter methods (optional parts of the Protocol):

    relax(samples, out_dir, progress) -> dict
        Relaxes every sample with the modality's tool (a learned potential, a force field), writes the
        relaxed samples with ``export`` (so ``evaluate`` reads the folder unchanged), one row per sample in
        ``relax.csv`` (energy before and after, RMSD of the move, steps, converged, final force, error) and
        ``relax_meta.json`` (tool, version, optimiser, thresholds: the protocol). Resumable: rows already
        in ``relax.csv`` are kept. A sample that cannot be relaxed gets its one-line error in its row.
    physics(samples, source) -> (metrics, rows)
        Metrics of the physical checks (keys prefixed by the protocol's name) and one dict per sample, in
        sample order, whose columns join the per-sample CSV of ``evaluate``. ``source``: the folder the
        samples were read from; when it was written by ``relax`` its ``relax.csv`` is used, else the
        adapter relaxes first.

``unite-sci relax`` calls ``engine.relax_path``; ``evaluate ... data.physics=true`` calls :func:`physics_metrics`.
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .files import atomic_write

RELAX_META = "relax_meta.json"  # written last by relax: its presence marks a finished relaxed folder
RELAX_CSV = "relax.csv"


def has_physics(adapter: Any) -> bool:
    return callable(getattr(adapter, "relax", None)) and callable(getattr(adapter, "physics", None))


def require_physics(adapter: Any) -> None:
    if not has_physics(adapter):
        raise UserError(f"modality '{adapter.name}' has no physics checks (no relax/physics methods)")


def relaxed_folder(path: str | Path) -> Path | None:
    """The folder written by ``relax`` that ``path`` is or lies in, or None."""
    p = Path(path)
    for d in (p, p.parent):
        if d.is_dir() and (d / RELAX_META).is_file():
            return d
    return None


def modality_of(samples: str | Path) -> str | None:
    """The modality recorded by ``sample`` (``samples_meta.json``) or ``relax`` beside the samples, or None."""
    p = Path(samples)
    for d in (p, p.parent):
        for name, key in (("samples_meta.json", "config"), (RELAX_META, "modality")):
            f = d / name
            if not f.is_file():
                continue
            try:
                meta = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if key == "modality" and meta.get("modality"):
                return str(meta["modality"])
            if key == "config" and meta.get("config"):
                return (yaml.safe_load(meta["config"]) or {}).get("modality")
    return None


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by :func:`write_rows` (missing file: none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One CSV, written atomically; columns in first-seen order over all rows."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()), binary=False)


def join_columns(per_sample_csv: str | Path, rows: list[dict[str, Any]]) -> None:
    """Add the physics columns to ``evaluate``'s per-sample CSV, row i to sample i (a missing CSV is
    written from the rows alone)."""
    path = Path(per_sample_csv)
    old = read_rows(path)
    if old and len(old) != len(rows):
        raise UserError(f"'{path}' has {len(old)} rows, the physics checks {len(rows)}: cannot join them")
    write_rows(path, [{**a, **b} for a, b in zip(old, rows)] if old else rows)


def physics_metrics(adapter: Any, samples: list[Any], source: Path, per_sample_csv: str | None) -> dict[str, Any]:
    """``evaluate``'s physics part (``data.physics=true``): the adapter's metrics, its per-sample columns
    joined to the per-sample CSV."""
    require_physics(adapter)
    t0 = time.time()
    metrics, rows = adapter.physics(samples, source)
    if per_sample_csv and rows:
        join_columns(per_sample_csv, rows)
    metrics["physics_wall_s"] = round(time.time() - t0, 2)
    return metrics
