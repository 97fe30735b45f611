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
PHYSICS_KEYS = "physics_metrics"  # evaluate's list of the names of its physical metrics
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
    metrics[PHYSICS_KEYS] = sorted(metrics)  # which of evaluate's numbers are these (a card copies them)
    metrics["physics_wall_s"] = round(time.time() - t0, 2)
    return metrics


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read '{path}': {e}") from None


def card_physics(results: dict[str, Any], sha256: str, name: str) -> dict[str, Any]:
    """The ``physics`` section of a shipped model's card from the results of ``evaluate ... data.physics=true``
    on that model's samples: the physical metrics, how many samples, how they were relaxed, and the
    commands of the three steps (as recorded, else rebuilt from the recorded settings). One-line error when
    the results have no physics, or when the samples were drawn by another model (sha256 in samples_meta.json)."""
    keys = results.get(PHYSICS_KEYS)
    if not keys:
        raise UserError("these results have no physical checks: run `unite-sci evaluate ... data.physics=true --out FILE`")
    folder = Path(str(results.get("samples_path", "")))
    folder = folder if folder.is_dir() else folder.parent
    relaxed = relaxed_folder(folder)
    relax = read_json(relaxed / RELAX_META) if relaxed else {}
    drawn = Path(str(relax.get("samples"))) if relax else folder
    drawn = drawn if drawn.is_dir() else drawn.parent
    if not (drawn / "samples_meta.json").is_file():
        raise UserError(f"no samples_meta.json in '{drawn}': cannot tell which model drew these samples")
    meta = read_json(drawn / "samples_meta.json")
    drew = str(meta.get("checkpoint_sha256") or "")
    if not drew or not sha256.startswith(drew):
        raise UserError(f"the samples in '{drawn}' were drawn by checkpoint sha256 {drew or '(none recorded)'}..., "
                        f"not by {name!r} ({sha256[:16]}...)")
    commands = {"sample": meta.get("command") or (f"unite-sci sample --model {name} --num {meta.get('num_samples')} "
                                                   f"--seed {meta.get('seed')} --temperature {meta.get('temperature')}")}
    if relax:
        commands["relax"] = relax.get("command") or f"unite-sci relax --samples {drawn} --out {relaxed}"
    commands["evaluate"] = results.get("command") or f"unite-sci evaluate --samples {folder} data.physics=true"
    n = results.get("num_samples")
    section: dict[str, Any] = {"num_samples": int(n) if isinstance(n, (int, float)) else n, "commands": commands}
    if relax:
        section["relaxation"] = {k: relax[k] for k in ("tool", "protocol", "settings", "relaxed", "failed", "converged",
                                                       "median_steps", "seconds_per_crystal_median",
                                                       "seconds_per_molecule_median", "workers") if k in relax}
    section["metrics"] = {k: (round(v, 4) if isinstance(v, float) else v) for k in keys
                          if isinstance(v := results.get(k), (int, float, str)) and not isinstance(v, bool)}
    return section
