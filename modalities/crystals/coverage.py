"""Distribution metrics of generated crystals against a reference set (CDVAE's definitions).

- Wasserstein distances (scipy, 1-D) of density (g/cm^3) and of the number of distinct elements,
  between valid generated crystals (``n_wdist`` of them drawn with a seed; CDVAE draws 1000) and every
  reference crystal.
- Coverage: per crystal a structure fingerprint (mean over sites of matminer's CrystalNN "ops"
  fingerprint, 61 values) and a composition fingerprint (matminer's Magpie ElementProperty, 132
  values, standardised). COV-R = share of reference crystals that have a generated crystal within both
  cutoffs; COV-P = share of generated crystals (all of them, valid or not, as CDVAE counts) within both
  cutoffs of some reference crystal. Cutoffs (structure, composition): MP-20 0.4 / 10, Carbon-24 and
  Perov-5 0.2 / 4. CDVAE standardises the composition fingerprint with constants fitted on its training
  data; here the scaler is fitted on the reference set unless ``comp_scaler`` is given, so COV values
  can differ slightly from CDVAE's own script.

CrystalNN fingerprints are slow (about 10-20 ms per site, minutes per thousand crystals on one core):
coverage is off by default and runs in parallel when asked for. It needs ``pip install matminer``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from unite_sci.errors import UserError
from unite_sci.parallel import parallel_map

from .structures import build_structure, to_arrays

COV_CUTOFFS = {"mp20": (0.4, 10.0), "carbon24": (0.2, 4.0), "perov5": (0.2, 4.0)}  # (structure, composition)


@dataclass
class ReferenceStats:
    """Per reference crystal: density (g/cm^3), element count, fingerprints (None when not computed)."""

    density: np.ndarray
    n_elements: np.ndarray
    struct_fp: np.ndarray | None     # (M, 61)
    comp_fp: np.ndarray | None       # (M, 132), raw (not standardised)


def _featurizers():
    try:
        from matminer.featurizers.composition.composite import ElementProperty
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
    except ImportError:
        raise UserError("coverage metrics need matminer: pip install matminer (or pass coverage=False)") from None
    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie")


_FEATURIZERS: tuple | None = None


def _fingerprint_task(a: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(structure fp, composition fp) of one crystal; a structure fp that fails is None (CDVAE)."""
    import warnings
    from collections import Counter

    from pymatgen.core import Composition, Element
    global _FEATURIZERS
    if _FEATURIZERS is None:  # built once per worker process
        _FEATURIZERS = _featurizers()
    site_fp, comp_fp = _FEATURIZERS
    s, _ = build_structure(a)
    if s is None:
        return None, None
    comp = Composition({Element.from_Z(int(k)): v for k, v in Counter(a[0].tolist()).items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CrystalNN warns about missing oxidation states on every site
        cfp = np.asarray(comp_fp.featurize(comp), dtype=float)
        try:
            sfp = np.mean([site_fp.featurize(s, i) for i in range(len(s))], axis=0)
        except Exception:  # noqa: BLE001
            return None, cfp
    return sfp, cfp


def _density_task(a: Any) -> tuple[float, int]:
    s, _ = build_structure(a)
    return (float("nan"), 0) if s is None else (float(s.density), len(set(s.species)))


def reference_stats(reference: Sequence[Any], workers: int = 1, time_limit_s: float | None = None,
                    fingerprints: bool = False, progress: bool = True) -> ReferenceStats:
    """Densities, element counts and (optionally) fingerprints of the reference crystals."""
    arrays = [a for a in (to_arrays(x) for x in reference) if not isinstance(a, str)]
    dens = parallel_map(_density_task, arrays, workers, time_limit_s, desc="reference", progress=progress)
    ok = [i for i, o in enumerate(dens) if o.value is not None and np.isfinite(o.value[0])]
    stats = ReferenceStats(np.array([dens[i].value[0] for i in ok]), np.array([dens[i].value[1] for i in ok]),
                           None, None)
    if fingerprints:
        _featurizers()  # fail early, in the parent, when matminer is missing
        fps = parallel_map(_fingerprint_task, [arrays[i] for i in ok], workers, time_limit_s,
                           desc="reference fingerprints", progress=progress)
        keep = [o.value for o in fps if o.value is not None and o.value[0] is not None]
        stats.struct_fp = np.array([k[0] for k in keep])
        stats.comp_fp = np.array([k[1] for k in keep])
    return stats


def wasserstein_metrics(density: np.ndarray, n_elements: np.ndarray, valid: np.ndarray, ref: ReferenceStats,
                        n_wdist: int | None = 1000, seed: int = 0) -> dict[str, float]:
    """1-D Wasserstein distances of density (g/cm^3) and element count, valid samples vs reference."""
    from scipy.stats import wasserstein_distance
    idx = np.flatnonzero(valid)
    if n_wdist is not None and len(idx) > n_wdist:
        idx = np.sort(np.random.default_rng(seed).choice(idx, n_wdist, replace=False))
    if len(idx) == 0 or len(ref.density) == 0:
        return {"wdist_density": float("nan"), "wdist_num_elems": float("nan"), "n_wdist": int(len(idx))}
    return {"wdist_density": float(wasserstein_distance(density[idx], ref.density)),
            "wdist_num_elems": float(wasserstein_distance(n_elements[idx], ref.n_elements)),
            "n_wdist": int(len(idx))}


def standardise(x: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """(x - mean) / std with NaN features set to 0 (matminer leaves NaN for elements without data)."""
    out = (x - means) / stds
    return np.where(np.isnan(out), 0.0, out)


def fit_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware per-feature mean and std; a constant or all-NaN feature gets std 1 (mean 0 if all-NaN)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        means, stds = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    means = np.where(np.isnan(means), 0.0, means)
    stds = np.where(np.isnan(stds) | (stds == 0), 1.0, stds)
    return means, stds


def coverage_from_fingerprints(gen_struct: np.ndarray, gen_comp: np.ndarray, ref_struct: np.ndarray,
                               ref_comp: np.ndarray, n_generated: int, struc_cutoff: float,
                               comp_cutoff: float) -> dict[str, float]:
    """COV-R / COV-P (%) and mean minimum distances from already standardised fingerprints.

    n_generated: all generated crystals, including those without fingerprints (COV-P denominator).
    """
    from scipy.spatial.distance import cdist
    if len(gen_struct) == 0 or len(ref_struct) == 0:
        return {"cov_recall_pct": 0.0, "cov_precision_pct": 0.0}
    d_s, d_c = cdist(gen_struct, ref_struct), cdist(gen_comp, ref_comp)   # (G, R)
    rec_s, rec_c = d_s.min(axis=0), d_c.min(axis=0)                        # per reference crystal
    pre_s, pre_c = d_s.min(axis=1), d_c.min(axis=1)                        # per generated crystal
    return {"cov_recall_pct": 100.0 * float(np.mean((rec_s <= struc_cutoff) & (rec_c <= comp_cutoff))),
            "cov_precision_pct": 100.0 * float(np.sum((pre_s <= struc_cutoff) & (pre_c <= comp_cutoff))) / n_generated,
            "amsd_recall": float(rec_s.mean()), "amsd_precision": float(pre_s.mean()),
            "amcd_recall": float(rec_c.mean()), "amcd_precision": float(pre_c.mean())}


def coverage_metrics(arrays: Sequence[Any], ref: ReferenceStats, dataset: str = "mp20", workers: int = 1,
                     time_limit_s: float | None = None, progress: bool = True,
                     comp_scaler: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """COV-R / COV-P of generated crystals (any validity) against reference fingerprints."""
    if ref.struct_fp is None or ref.comp_fp is None:
        raise ValueError("coverage_metrics: reference_stats was computed without fingerprints")
    if dataset not in COV_CUTOFFS:
        raise UserError(f"no coverage cutoffs for dataset {dataset!r}; available: {', '.join(COV_CUTOFFS)}")
    usable = [a for a in arrays if not isinstance(a, str)]
    fps = parallel_map(_fingerprint_task, usable, workers, time_limit_s, desc="fingerprints", progress=progress)
    keep = [o.value for o in fps if o.value is not None and o.value[0] is not None and o.value[1] is not None]
    means, stds = comp_scaler or fit_scaler(ref.comp_fp)
    gen_s = np.array([k[0] for k in keep]).reshape(-1, ref.struct_fp.shape[1])
    gen_c = standardise(np.array([k[1] for k in keep]).reshape(-1, ref.comp_fp.shape[1]), means, stds)
    out = coverage_from_fingerprints(gen_s, gen_c, ref.struct_fp, standardise(ref.comp_fp, means, stds),
                                     len(arrays), *COV_CUTOFFS[dataset])
    out["n_fingerprints"] = len(keep)
    return out
