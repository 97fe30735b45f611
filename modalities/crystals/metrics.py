"""Crystal metrics as CDVAE / DiffCSP / ADiT define them, robust to garbage and parallel.

Validity (per crystal, CDVAE ``Crystal``): structural = every minimum-image distance between two
distinct sites >= 0.5 A and cell volume >= 0.1 A^3; compositional = SMACT charge neutrality + Pauling
electronegativity test on the composition reduced by its gcd, single elements and all-metal alloys
valid, oxidation-state spaces over 1e7 combinations invalid (the ADiT / DiffCSP cap). Overall = both.
The oxidation states are SMACT 2.x's default list, as in the published numbers (SMACT >= 3 defaults
to an ICSD-24 set; see ``OXIDATION_SETS``). Composition validity is judged even when the geometry is
broken, as in CDVAE (ADiT marks such crystals composition-invalid too).

Reconstruction: ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10).get_rms_dist(rec, ref)``; a pair
counts when both crystals are valid (``gate="both"``, ADiT / DiffCSP; CDVAE gates on the prediction
only: ``gate="pred"``). RMSE is pymatgen's RMS displacement normalised by (V / N)^(1/3), averaged
over matched pairs. The ungated rate is returned beside it.

Generation: uniqueness = StructureMatcher groups among valid crystals / valid (ADiT); novelty = unique
valid crystals matching no training crystal / unique; Wasserstein distances of density (g/cm^3) and
element count, and COV-R / COV-P (``coverage.py``), against a reference set (the test split).

Every number carries the protocol name; rates are percentages.
"""
from __future__ import annotations

import csv
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from unite_sci.files import beside
from unite_sci.parallel import parallel_map, run_limited
from unite_sci.reduce import percent

from .coverage import coverage_metrics, reference_stats, wasserstein_metrics
from .structures import MAX_Z, Arrays, build_structure, to_arrays
from .symmetry import (ANGLE_TOLERANCE, SYMPREC, plot_space_groups, reference_space_groups, space_group_metrics,
                       space_groups)

MATCHER = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0}
MIN_DISTANCE = 0.5        # Angstrom, between two distinct sites
MAX_OX_COMBOS = 1e7       # oxidation-state combinations; larger spaces count as invalid (ADiT, DiffCSP)
OXIDATION_SETS = ("smact2_default", "icsd16", "pymatgen")  # or a path to a SMACT-format oxidation file
DEFAULT_TIME_LIMIT_S = 30.0


# ----------------------------------------------------------------------------- validity
def composition_key(z: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(atomic numbers sorted, counts divided by their gcd): the composition CDVAE tests."""
    c = Counter(int(v) for v in z)
    elems = tuple(sorted(c))
    counts = np.array([c[e] for e in elems])
    return elems, tuple((counts // np.gcd.reduce(counts)).tolist())


def structure_validity(a: Arrays, angle_window: tuple[float, float] | None = None) -> tuple[bool, str]:
    """(valid, reason) for the geometry: distances between distinct sites >= 0.5 A, volume >= 0.1 A^3."""
    s, reason = build_structure(a, angle_window)
    if s is None:
        return False, reason
    if len(s) > 1:
        d = s.distance_matrix + np.eye(len(s)) * (MIN_DISTANCE + 10.0)
        if d.min() < MIN_DISTANCE:
            return False, "overlap"
    return True, ""


@lru_cache(maxsize=8)
def _oxidation_table(name: str) -> dict[str, list[int]] | None:
    """None for SMACT's own sets; else element -> states from a SMACT-format text file."""
    if name in OXIDATION_SETS:
        return None
    table: dict[str, list[int]] = {}
    for line in Path(name).read_text().splitlines():
        parts = line.split("#")[0].split()
        if parts:
            table[parts[0]] = [int(v) for v in parts[1:]]
    return table


def smact_validity(z_sorted: Sequence[int], counts: Sequence[int], oxidation_states: str = "smact2_default",
                   use_pauling_test: bool = True, include_alloys: bool = True) -> tuple[bool, str]:
    """(valid, reason) of a composition: elements (atomic numbers) with gcd-reduced counts.

    Same decision as CDVAE's / ADiT's ``smact_validity`` under SMACT 2.x. oxidation_states:
    "smact2_default" (published numbers), "icsd16" / "pymatgen" (SMACT 2.6's other sets) or a file path
    (e.g. SMACT >= 3's ``oxidation_states_icsd24_filtered.txt``: the SMACT-4-style variant).
    """
    import smact
    from pymatgen.core import Element
    from smact.screening import pauling_test
    symbols = tuple(Element.from_Z(int(v)).symbol for v in z_sorted)
    if len(set(symbols)) == 1:
        return True, ""
    if include_alloys and all(s in smact.metals for s in symbols):
        return True, ""
    space = smact.element_dictionary(symbols)
    elems = [space[s] for s in symbols]
    enegs = [e.pauling_eneg for e in elems]
    table = _oxidation_table(oxidation_states)
    if table is not None:
        ox = [table.get(s, []) for s in symbols]
    else:
        attr = {"smact2_default": "oxidation_states", "icsd16": "oxidation_states_icsd",
                "pymatgen": "oxidation_states_sp"}[oxidation_states]
        ox = [getattr(e, attr) or [] for e in elems]
    if math.prod(len(o) for o in ox) > MAX_OX_COMBOS:
        return False, "too_many_oxidation_combos"
    stoichs = [(int(c),) for c in counts]
    threshold = max(counts)
    for states in itertools.product(*ox):
        neutral = smact.neutral_ratios(states, stoichs=stoichs, threshold=threshold)
        if isinstance(neutral, tuple):  # SMACT 2.x returns (ok, ratios); SMACT >= 3 only the ratios
            neutral = neutral[0]
        if not neutral:
            continue
        if not use_pauling_test:
            return True, ""
        try:
            ok = pauling_test(states, enegs)
        except TypeError:  # an element without electronegativity data passes, as in CDVAE
            ok = True
        if ok:
            return True, ""
    return False, "smact"


def _validity_task(item: tuple, angle_window: tuple[float, float] | None, oxidation_states: str) -> dict:
    """One task of either kind: ("comp", key) or ("struct", arrays)."""
    kind, payload = item
    if kind == "comp":
        return dict(zip(("ok", "reason"), smact_validity(*payload, oxidation_states=oxidation_states)))
    ok, reason = structure_validity(payload, angle_window)
    out = {"ok": ok, "reason": reason, "density": float("nan")}
    if ok:  # density (g/cm^3) for the Wasserstein distance; only meaningful for sane cells
        s, _ = build_structure(payload, angle_window)
        out["density"] = float(s.density)
    return out


@dataclass
class Validity:
    """Per-crystal validity: flags, reasons and densities (g/cm^3, NaN when not structurally valid)."""

    struct: np.ndarray
    comp: np.ndarray
    reasons: list[str]
    density: np.ndarray
    n_elements: np.ndarray
    timeouts: int

    @property
    def valid(self) -> np.ndarray:
        return self.struct & self.comp


def validity(samples: Sequence[Any], workers: int = 1, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
             oxidation_states: str = "smact2_default", angle_window: tuple[float, float] | None = None,
             progress: bool = True) -> Validity:
    """Validity of every sample. Distinct compositions are tested once (SMACT is the slow part)."""
    arrays = [to_arrays(x) for x in samples]
    comp_keys: dict[tuple, int] = {}
    for a in arrays:
        if not isinstance(a, str) and len(a[0]) and (a[0] >= 1).all() and (a[0] <= MAX_Z).all():
            comp_keys.setdefault(composition_key(a[0]), len(comp_keys))
    tasks = [("comp", k) for k in comp_keys] + [("struct", a) for a in arrays if not isinstance(a, str)]
    outs = parallel_map(partial(_validity_task, angle_window=angle_window, oxidation_states=oxidation_states),
                        tasks, workers, time_limit_s, desc="validity", progress=progress)
    comp_out, struct_out = outs[:len(comp_keys)], iter(outs[len(comp_keys):])
    n = len(arrays)
    res = Validity(np.zeros(n, bool), np.zeros(n, bool), [""] * n, np.full(n, np.nan), np.zeros(n, np.int64), 0)
    res.timeouts = sum(1 for o in outs if o.error and o.error.startswith("timeout"))
    for i, a in enumerate(arrays):
        if isinstance(a, str):
            res.reasons[i] = a
            continue
        reasons = []
        so = next(struct_out)
        res.struct[i] = bool(so.value and so.value["ok"])
        reasons.append(so.value["reason"] if so.value else so.error)
        res.density[i] = so.value["density"] if so.value else np.nan
        res.n_elements[i] = len(set(a[0].tolist()))
        key = composition_key(a[0]) if len(a[0]) and (a[0] >= 1).all() and (a[0] <= MAX_Z).all() else None
        if key is not None:
            co = comp_out[comp_keys[key]]
            res.comp[i] = bool(co.value and co.value["ok"])
            reasons.append(co.value["reason"] if co.value else f"smact_{co.error}")
        res.reasons[i] = "+".join(r for r in reasons if r)
    return res


# ----------------------------------------------------------------------------- StructureMatcher work
@lru_cache(maxsize=4)
def _matcher(stol: float, ltol: float, angle_tol: float):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    return StructureMatcher(stol=stol, ltol=ltol, angle_tol=angle_tol)


def _rms_task(pair: tuple[Arrays, Arrays], tol: tuple[float, float, float]) -> float | None:
    """Normalised RMS displacement of rec vs ref, None when they do not match."""
    (ref, why_ref), (rec, why_rec) = (build_structure(p) for p in pair)
    if ref is None or rec is None:  # the reason reaches the per-pair csv as this pair's error
        raise ValueError(f"ref {why_ref}" if ref is None else f"rec {why_rec}")
    rms = _matcher(*tol).get_rms_dist(rec, ref)
    return None if rms is None else float(rms[0])


def _reduce(a: Arrays):
    """Niggli cell, then its primitive cell: what ``StructureMatcher`` prepares before each fit, done once
    per crystal here so that fits can skip it. Public API for the steps of pymatgen's private
    ``_get_reduced_structure``; both give bitwise the same cells on 500 MP-20 test crystals (pymatgen 2026.10)."""
    return build_structure(a)[0].get_reduced_structure("niggli").get_primitive_structure()


def _group_task(group: tuple[list[Arrays], list[Arrays]], tol: tuple, time_limit_s: float | None) -> dict:
    """Greedy grouping of one composition's crystals (pymatgen's ``group_structures`` order), then each
    group's first member against the training crystals of that composition. A comparison that runs out
    of time counts as no match and is reported."""
    members, train = group
    m = _matcher(*tol)
    fit = (lambda pair: m.fit(pair[0], pair[1], skip_structure_reduction=True))
    red = [run_limited(_reduce, a, time_limit_s) for a in members]
    red_train = [o.value for o in (run_limited(_reduce, a, time_limit_s) for a in train) if o.value is not None]
    failures: list[str] = [o.error for o in red if o.error]
    labels = [-1] * len(members)
    refs: list[int] = []
    for i, r in enumerate(red):
        if r.value is None:
            continue
        for g, j in enumerate(refs):
            o = run_limited(fit, (red[j].value, r.value), time_limit_s)
            if o.error:
                failures.append(o.error)
            if o.value:
                labels[i] = g
                break
        else:
            labels[i] = len(refs)
            refs.append(i)
    novel = []
    for j in refs:
        outs = (run_limited(fit, (red[j].value, t), time_limit_s) for t in red_train)
        hit = False
        for o in outs:
            failures += [o.error] if o.error else []
            if o.value:
                hit = True
                break
        novel.append(not hit)
    return {"labels": labels, "novel": novel, "failures": failures}


def _formula(a: Arrays) -> str:
    from pymatgen.core import Composition, Element
    return Composition({Element.from_Z(int(k)): int(v) for k, v in Counter(a[0].tolist()).items()}).reduced_formula


# ----------------------------------------------------------------------------- entry points
def _meta(protocol: str, **extra: Any) -> dict[str, Any]:
    keys = {"smact_version": version("smact"), "pymatgen_version": version("pymatgen"),
            "matcher_stol": MATCHER["stol"], "matcher_ltol": MATCHER["ltol"],
            "matcher_angle_tol": MATCHER["angle_tol"], **extra}
    return {"protocol": protocol, **{f"{protocol}/{k}": v for k, v in keys.items()}}


def _pct(x: float, n: int) -> float:
    return percent(x, n, digits=4)  # four decimals: more than the published tables, less than float noise


def unique_novel(arrays: Sequence[Any], members: Sequence[int], train: Sequence[Any] | None, workers: int,
                 time_limit_s: float | None, progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """StructureMatcher groups among ``arrays[members]`` (composition by composition: groups never cross
    one) and novelty of each group's first member against ``train``. Returns (group index per item, -1 for
    none; per item 1 / 0 on a group's first member when ``train`` is given, else ""; failure messages)."""
    n = len(arrays)
    groups: dict[str, list[int]] = {}
    for i in members:
        groups.setdefault(_formula(arrays[i]), []).append(int(i))
    train_by_formula: dict[str, list[Arrays]] = {}
    for a in (to_arrays(x) for x in (train or [])):
        if not isinstance(a, str) and len(a[0]) and (a[0] >= 1).all() and (a[0] <= MAX_Z).all():
            train_by_formula.setdefault(_formula(a), []).append(a)
    tasks = [([arrays[i] for i in idx], train_by_formula.get(f, [])) for f, idx in groups.items()]
    tol = (MATCHER["stol"], MATCHER["ltol"], MATCHER["angle_tol"])
    outs = parallel_map(partial(_group_task, tol=tol, time_limit_s=time_limit_s), tasks, workers, None,
                        desc="unique/novel", progress=progress)
    group_of = np.full(n, -1)
    novel = np.zeros(n, dtype=object)
    novel[:] = ""
    next_group, failures = 0, []
    for (f, idx), o in zip(groups.items(), outs):
        r = o.value or {"labels": [-1] * len(idx), "novel": [], "failures": [o.error]}
        failures += r["failures"]
        for i, lab in zip(idx, r["labels"]):
            group_of[i] = next_group + lab if lab >= 0 else -1
        for g, is_novel in enumerate(r["novel"]):
            first = idx[r["labels"].index(g)]
            novel[first] = int(is_novel) if train is not None else ""
        next_group += len(r["novel"])
    return group_of, novel, failures


def evaluate_generation(structures: Sequence[Any], train: Sequence[Any] | None = None,
                        per_sample_csv: str | Path | None = None, workers: int = 1, *,
                        reference: Sequence[Any] | None = None, protocol: str = "MP-20",
                        dataset: str = "mp20", coverage: bool = False,
                        time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
                        oxidation_states: str = "smact2_default",
                        angle_window: tuple[float, float] | None = None, n_wdist: int | None = 1000,
                        comp_scaler: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
                        symmetry: bool = True, cache_dir: str | Path | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Generation metrics of ``structures`` (pymatgen Structures, CrystalItems or (z, frac, lengths,
    angles) tuples; garbage allowed). train: crystals for novelty (skipped when None). reference: the
    test split for Wasserstein distances and coverage (skipped when None). coverage needs matminer.
    n_wdist: valid samples drawn (seeded) for the Wasserstein distances, CDVAE uses 1000; None = all.
    comp_scaler: (means, stds) of the 132 Magpie features; None = fitted on ``reference``.
    symmetry: space groups (``symmetry.py``) of every sample and of ``train`` (else ``reference``), the
    reference's cached under ``cache_dir`` (None: not cached); the plot lands beside ``per_sample_csv``.
    Keys are ``f"{protocol}/{name}"``; ``*_pct`` are percentages.
    """
    t0 = time.perf_counter()
    n = len(structures)
    arrays = [to_arrays(x) for x in structures]
    val = validity(arrays, workers, time_limit_s, oxidation_states, angle_window, progress)
    valid_idx = np.flatnonzero(val.valid)
    out: dict[str, Any] = {
        "n_samples": n, "struct_valid_pct": _pct(val.struct.sum(), n), "comp_valid_pct": _pct(val.comp.sum(), n),
        "valid_pct": _pct(val.valid.sum(), n), "n_timeouts": val.timeouts,
        "invalid_reasons": dict(Counter(r for r in val.reasons if r).most_common())}

    # uniqueness (and novelty) per composition group of valid crystals: groups never match each other
    group_of, novel, failures = unique_novel(arrays, valid_idx, train, workers, time_limit_s, progress)
    n_unique = len(set(group_of[group_of >= 0].tolist()))
    n_novel = int(sum(v == 1 for v in novel))
    out["unique_pct"] = _pct(n_unique, len(valid_idx))
    out["matcher_failures"] = len(failures)
    if train is not None:
        out["novel_pct"] = _pct(n_novel, n_unique)
        out["unique_novel_pct"] = _pct(n_novel, n)

    if reference is not None:
        ref = reference_stats(reference, workers, time_limit_s, fingerprints=coverage, progress=progress)
        out.update(wasserstein_metrics(val.density, val.n_elements, val.valid, ref, n_wdist, seed))
        if coverage:
            out.update(coverage_metrics(arrays, ref, dataset, workers, time_limit_s, progress, comp_scaler))
    sg, sg_ref = np.zeros(n, dtype=np.int64), None
    ref_set = train if train is not None else reference
    if symmetry and ref_set is not None:
        sg = space_groups(arrays, workers, time_limit_s, progress=progress)
        sg_ref = reference_space_groups(ref_set, cache_dir, workers, time_limit_s, progress=progress)
        out.update(space_group_metrics(sg, val.valid, sg_ref))
    if per_sample_csv:
        _write_per_sample(Path(per_sample_csv), arrays, val, group_of, novel, sg)
        if sg_ref is not None:
            plot_space_groups(sg, val.valid, sg_ref, beside(per_sample_csv, "space_groups.png"))
    res = _meta(protocol, oxidation_states=oxidation_states, time_limit_s=time_limit_s, workers=workers,
                angle_window=angle_window, seconds=round(time.perf_counter() - t0, 2),
                **({} if sg_ref is None else {"space_group_reference": "train" if train is not None else "reference",
                                             "space_group_symprec": SYMPREC,
                                             "space_group_angle_tolerance": ANGLE_TOLERANCE}))
    res.update({f"{protocol}/{k}": v for k, v in out.items()})
    return res


def reconstruction_metrics(ref: Sequence[Any], rec: Sequence[Any], workers: int = 1, *,
                           protocol: str = "MP-20", gate: Literal["both", "pred", "none"] = "both",
                           time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
                           oxidation_states: str = "smact2_default", per_pair_csv: str | Path | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Match rate (%) and mean normalised RMS displacement of ``rec[i]`` against ``ref[i]``.

    gate: which crystals must be valid for a pair to count ("both": ADiT / DiffCSP, "pred": CDVAE).
    ``match_rate_ungated_pct`` ignores validity. A comparison past ``time_limit_s`` is no match;
    per_pair_csv lists each pair's validity, RMS and failure reason.
    """
    if len(ref) != len(rec):
        raise ValueError(f"reconstruction_metrics: {len(ref)} references but {len(rec)} reconstructions")
    t0 = time.perf_counter()
    a_ref, a_rec = [to_arrays(x) for x in ref], [to_arrays(x) for x in rec]
    tol = (MATCHER["stol"], MATCHER["ltol"], MATCHER["angle_tol"])
    pairs = [(r, p) if not isinstance(r, str) and not isinstance(p, str) else None for r, p in zip(a_ref, a_rec)]
    idx = [i for i, p in enumerate(pairs) if p is not None]
    outs = parallel_map(partial(_rms_task, tol=tol), [pairs[i] for i in idx], workers, time_limit_s,
                        desc="match", progress=progress)
    rms, errors = np.full(len(ref), np.nan), [a if isinstance(a, str) else b if isinstance(b, str) else ""
                                              for a, b in zip(a_ref, a_rec)]
    for i, o in zip(idx, outs):
        rms[i] = np.nan if o.value is None else o.value
        errors[i] = o.error or ""
    v_all = validity(a_rec + a_ref, workers, time_limit_s, oxidation_states, progress=progress).valid
    v_rec, v_ref = v_all[:len(rec)], v_all[len(rec):]  # one pool for both: each pool costs a spawn
    if per_pair_csv:
        Path(per_pair_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(per_pair_csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "ref_valid", "rec_valid", "rms", "error"])
            w.writerows([i, int(v_ref[i]), int(v_rec[i]), f"{rms[i]:.6g}", errors[i]] for i in range(len(ref)))
    ok = {"both": v_rec & v_ref, "pred": v_rec, "none": np.ones(len(ref), bool)}[gate]
    matched, any_match = ok & np.isfinite(rms), np.isfinite(rms)
    n = len(ref)
    out = {"n_pairs": n, "gate": gate, "match_rate_pct": _pct(matched.sum(), n),
           "rmse": float(np.mean(rms[matched])) if matched.any() else float("nan"),
           "match_rate_ungated_pct": _pct(any_match.sum(), n),
           "rmse_ungated": float(np.mean(rms[any_match])) if any_match.any() else float("nan"),
           "n_timeouts": sum(1 for o in outs if o.error and o.error.startswith("timeout")),
           "n_unbuildable_or_errors": sum(1 for o in outs if o.error and not o.error.startswith("timeout")) + n - len(idx)}
    res = _meta(protocol, time_limit_s=time_limit_s, workers=workers, seconds=round(time.perf_counter() - t0, 2))
    res.update({f"{protocol}/{k}": v for k, v in out.items()})
    return res


def _write_per_sample(path: Path, arrays: list, val: Validity, group_of: np.ndarray, novel: np.ndarray,
                      sg: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "n_atoms", "formula", "struct_valid", "comp_valid", "valid", "reason",
                    "density_g_cm3", "n_elements", "unique_group", "novel", "space_group"])
        for i, a in enumerate(arrays):
            ok = not isinstance(a, str) and len(a[0]) and (a[0] >= 1).all() and (a[0] <= MAX_Z).all()
            w.writerow([i, 0 if isinstance(a, str) else len(a[0]), _formula(a) if ok else "",
                        int(val.struct[i]), int(val.comp[i]), int(val.valid[i]), val.reasons[i],
                        f"{val.density[i]:.4f}", int(val.n_elements[i]), int(group_of[i]), novel[i],
                        int(sg[i]) or ""])
