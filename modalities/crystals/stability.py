"""The crystal adapter's physics hook (``unite_sci/physics.py``): ``unite-sci relax`` and ``evaluate ...
data.physics=true`` for every crystal data set.

relax: CHGNet (``physics.py``) over the samples in chunks, each finished crystal appended to
``relax_progress.jsonl`` so that a killed run resumes where it stopped; at the end the relaxed crystals are
exported like ``sample`` writes them, with ``relax.csv`` (one row per sample) and the space groups before
and after. physics: energies above the hull (``hull.py``), stable / metastable / S.U.N. / M.S.U.N. shares,
the symmetry before and after relaxation against the training crystals, and ``e_hull.png``.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from unite_sci.physics import RELAX_CSV, read_rows, relaxed_folder, write_rows

from . import physics as cphys
from .hull import METASTABLE, PROTOCOL, STABLE, Hull, References, read_formation_energies
from .metrics import unique_novel
from .structures import to_arrays
from .symmetry import space_group_metrics, space_groups

PROGRESS = "relax_progress.jsonl"


def relax_samples(adapter: Any, samples: list, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Relax ``samples`` into ``out_dir`` (see the module docstring); returns the protocol summary."""
    from tqdm import tqdm

    c = adapter.cfg
    settings = cphys.RelaxSettings(c.relax_optimizer, c.relax_fmax, c.relax_steps, c.relax_cell)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / PROGRESS
    done = cphys.read_progress(log)
    todo = [i for i in range(len(samples)) if i not in done]
    workers = adapter._workers()
    if done and progress:
        print(f"relax: resuming, {len(done)} of {len(samples)} crystals already relaxed in '{log}'")
    chunk = max(2 * workers, 8)  # each chunk is appended to the log: a kill loses at most one chunk
    bar = tqdm(total=len(samples), initial=len(done), desc="relax (CHGNet)", disable=not progress, unit="crystal")
    t0 = time.time()
    for k in range(0, len(todo), chunk):
        idx = todo[k:k + chunk]
        rows = cphys.relax_all([samples[i] for i in idx], settings, workers, c.relax_time_limit_s, progress=False)
        for i, r in zip(idx, rows):
            r["index"] = i
            done[i] = r
        cphys.append_progress(log, rows)
        bar.update(len(idx))
    bar.close()
    rows = [done[i] for i in range(len(samples))]
    relaxed = [r["arrays"] if r.get("arrays") is not None else samples[i] for i, r in enumerate(rows)]
    sg_before = space_groups(samples, workers, c.time_limit_s, progress=False)
    sg_after = space_groups(relaxed, workers, c.time_limit_s, progress=False)
    items = adapter.items_from_domain([_item(a, i) for i, a in enumerate(relaxed)])
    adapter.export(items, out_dir)
    table = [{"index": i, **{k: v for k, v in r.items() if k not in ("arrays", "index")},
              "space_group_before": int(sg_before[i]), "space_group_after": int(sg_after[i])}
             for i, r in enumerate(rows)]
    write_rows(out_dir / RELAX_CSV, table)
    ok = [r for r in rows if not r["error"]]
    secs = [r["seconds"] for r in rows]
    return {"tool": cphys.chgnet_version(), "protocol": PROTOCOL, "settings": asdict(settings),
            "time_limit_s": c.relax_time_limit_s, "workers": workers,
            "relaxed": len(ok), "failed": len(rows) - len(ok),
            "converged": sum(bool(r["converged"]) for r in rows),
            "median_steps": float(np.median([r["steps"] for r in ok])) if ok else float("nan"),
            "seconds_per_crystal_median": float(np.median(secs)) if secs else float("nan"),
            "this_call_wall_s": round(time.time() - t0, 2),
            "errors": sorted({r["error"] for r in rows if r["error"]})[:10]}


def _item(a: Any, i: int):
    from .data import CrystalItem

    a = to_arrays(a)
    if isinstance(a, str):
        return CrystalItem(np.zeros(0, np.int64), np.zeros((0, 3)), np.full(3, np.nan), np.full(3, np.nan), f"{i}")
    return CrystalItem(a[0], a[1], a[2], a[3], f"{i}")


def _uniq_novel(arrays: list, train: list | None, workers: int, time_limit_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: first of its StructureMatcher group among all buildable samples (unique), and that group
    matches no training crystal (novel; False without ``train``)."""
    members = [i for i, a in enumerate(arrays) if not isinstance(a, str) and len(a[0])]
    group_of, novel, _ = unique_novel(arrays, members, train, workers, time_limit_s)
    first = np.zeros(len(arrays), bool)
    seen: set[int] = set()
    for i, g in enumerate(group_of):
        if g >= 0 and g not in seen:
            seen.add(int(g))
            first[i] = True
    return first, np.array([v == 1 for v in novel], bool)


def hull_files(adapter: Any) -> list[Path]:
    """The csvs whose rows make the hull: the data set's canonical or offline train/val/test files."""
    from . import data as cdata

    c = adapter.cfg
    if c.data_dir:
        folder, stems = Path(c.data_dir), ("train", "val", "test")
    else:
        info = cdata.DATASETS[c.dataset]
        folder = Path(c.offline_root or cdata.default_offline_root()) / info.folder
        stems = (info.partial_train or "train", "val", "test")
    files = [p for s in stems for p in (folder / f"{s}.csv", folder / f"{s}.csv.gz") if p.is_file()]
    if not files:
        from unite_sci.errors import DataError
        raise DataError(f"{folder}: no csv with formation energies for the hull")
    return files


def load_hull(adapter: Any, exclude_ids: set[str] = frozenset()) -> Hull:
    comps, ef, _ = read_formation_energies(hull_files(adapter), exclude_ids)
    return Hull(comps, ef)


def evaluate_physics(adapter: Any, samples: list, source: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The physics part of ``evaluate`` (see the module docstring): metrics keyed ``"<protocol>/..."``
    and one row per sample."""
    folder = relaxed_folder(source)
    if folder is None:  # relax first, into a folder beside the samples (kept: a rerun resumes)
        base = Path(source) if Path(source).is_dir() else Path(source).parent
        folder = base / "relaxed"
        print(f"physics: relaxing {len(samples)} crystals with CHGNet into '{folder}' first "
              f"(tens of seconds per crystal per core; `unite-sci relax` does this step alone)")
        from unite_sci.files import write_json
        from unite_sci.physics import RELAX_META
        summary = relax_samples(adapter, samples, folder)
        write_json({"modality": adapter.name, "samples": str(source), "num_samples": len(samples), **summary},
                   folder / RELAX_META)
        samples = adapter.load_samples(folder)
    rows = read_rows(folder / RELAX_CSV)
    if len(rows) != len(samples):
        from unite_sci.errors import DataError
        raise DataError(f"{folder / RELAX_CSV}: {len(rows)} rows for {len(samples)} samples")
    c, p = adapter.cfg, PROTOCOL
    arrays = [to_arrays(s) for s in samples]
    energies = np.array([_num(r["energy_after_ev_per_atom"]) for r in rows])
    refs, hull = References.load(), load_hull(adapter)
    zs = [a[0] if not isinstance(a, str) else None for a in arrays]
    ef, eh = cphys.e_above_hull(zs, energies, refs, hull)
    train = adapter.train_items() if c.novelty else None
    unique, novel = _uniq_novel(arrays, train, adapter._workers(), c.time_limit_s)
    m = cphys.stability_metrics(eh, unique, novel)
    sg_before = np.array([int(r.get("space_group_before") or 0) for r in rows])
    sg_after = np.array([int(r.get("space_group_after") or 0) for r in rows])
    out: dict[str, Any] = {f"{p}/{k}": v for k, v in m.items()}
    out[f"{p}/hull_entries"] = len(hull)
    out[f"{p}/relaxed_pct"] = round(100 * np.mean([not r["error"] for r in rows]), 2)
    out[f"{p}/converged_pct"] = round(100 * np.mean([r["converged"] in ("True", True) for r in rows]), 2)
    out[f"{p}/relax_seconds_per_crystal_median"] = float(np.median([_num(r["seconds"]) for r in rows]))
    if c.space_groups and train is not None:
        from .symmetry import reference_space_groups
        from . import data as cdata
        ref = reference_space_groups(train, None if c.cache_dir == "" else (c.cache_dir or cdata.default_cache_dir()),
                                     adapter._workers(), c.time_limit_s, progress=False)
        every = np.ones(len(rows), bool)
        for tag, sg in (("before", sg_before), ("after", sg_after)):
            out.update({f"{p}/{k}_{tag}_relax": v for k, v in space_group_metrics(sg, every, ref).items()})
    out[f"{p}/references"] = refs.meta.get("summary", "")
    out[f"{p}/definition"] = (f"E_hull of the CHGNet-relaxed crystal against the hull of {len(hull)} DFT formation "
                              f"energies of the {adapter.protocol} csvs (elements at 0); stable <= {STABLE}, "
                              f"metastable <= {METASTABLE} eV/atom; S.U.N. = stable, unique and novel (StructureMatcher)"
                              "; share of all samples")
    cphys.plot_e_hull({"samples": eh}, folder / "e_hull.png")
    per = [{"e_form_ev_per_atom": round(float(f), 5) if np.isfinite(f) else "",
            "e_hull_ev_per_atom": round(float(e), 5) if np.isfinite(e) else "",
            "stable": bool(np.isfinite(e) and e <= STABLE), "metastable": bool(np.isfinite(e) and e <= METASTABLE),
            "unique_relaxed": bool(u), "novel_relaxed": bool(v),
            "sun": bool(np.isfinite(e) and e <= STABLE and u and v),
            "space_group_before": int(b), "space_group_after": int(a), "relax_converged": r["converged"],
            "relax_steps": r["steps"], "relax_error": r["error"]}
           for f, e, u, v, b, a, r in zip(ef, eh, unique, novel, sg_before, sg_after, rows)]
    return out, per


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")
