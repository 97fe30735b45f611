"""Crystal metrics (modalities/crystals/metrics.py, coverage.py): definitions, garbage, invariances (atom
permutation, translation, supercell, another lattice basis). The pool's time limits: tests/test_core_helpers.py."""
from __future__ import annotations

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from unite_sci_modalities.crystals import metrics as M
from unite_sci_modalities.crystals.coverage import (coverage_from_fingerprints, fit_scaler, standardise,
                                                    wasserstein_metrics, ReferenceStats)
from unite_sci_modalities.crystals.data import load_split, to_structure

HERE = Path(__file__).parent / "data" / "crystals"
P = "MP-20 test"


@pytest.fixture(scope="module")
def real():
    """Six real MP-20 test crystals (CDVAE csv rows), as pymatgen Structures."""
    c = load_split("mp20", "test", data_dir=HERE / "canonical", cache_dir="", progress=False)
    rows = load_split("mp20", "train", data_dir=HERE / "canonical", cache_dir="", progress=False)
    return c.structures() + rows.structures()


def _garbage() -> dict[str, object]:
    ones, right = np.ones(3) * 4.0, np.full(3, 90.0)
    rand = np.random.default_rng(0).random((2, 3))
    return {
        "no_atoms": (np.zeros(0, int), np.zeros((0, 3)), ones, right),
        "overlap": (np.array([6, 6]), np.zeros((2, 3)), ones, right),
        "nan_value": (np.array([6, 8]), np.array([[0, 0, 0], [np.nan, 0, 0]]), ones, right),
        "unknown_element": (np.array([6, 999]), rand, ones, right),
        "small_volume": (np.array([11, 17]), rand, np.zeros(3), right),
        "impossible_angles": (np.array([11, 17]), rand, ones, np.array([10.0, 10.0, 170.0])),
        "negative_length": (np.array([11, 17]), rand, -ones, right),
        "bad_input": "not a crystal",
        "none": None,
        "ragged": (np.array([6, 8, 8]), np.zeros((2, 3)), ones, right),
    }


# ----------------------------------------------------------------------------- validity definitions
@pytest.mark.parametrize("formula, valid", [
    ("NaCl", True), ("NaCl2", False), ("Fe", True), ("FeNi3", True), ("Fe2O3", True), ("HeO", False),
    ("BaN2", True), ("Li3N", True),
])
def test_smact_validity_closed_cases(formula, valid):
    from pymatgen.core import Composition
    comp = Composition(formula)
    z = np.concatenate([[el.Z] * int(n) for el, n in comp.items()])
    assert M.smact_validity(*M.composition_key(z))[0] is valid


def test_smact_variant_from_oxidation_file(tmp_path):
    f = tmp_path / "ox.txt"
    f.write_text("# element states\nNa 1\nCl -1\nO\n")
    assert M.smact_validity((11, 17), (1, 1), oxidation_states=str(f))[0]
    assert not M.smact_validity((8, 11), (1, 2), oxidation_states=str(f))[0]  # O has no states here


def test_real_structures_are_structurally_valid(real):
    v = M.validity(real, progress=False)
    assert v.struct.all() and (v.density > 1).all() and v.timeouts == 0


def test_metric_modules_import_without_torch():
    # Spawned metric workers import these modules (MAX_Z comes from modalities/atoms.py); torch would cost
    # each worker about 1.7 s (unite_sci/parallel.py).
    mods = ", ".join(f"unite_sci_modalities.crystals.{m}" for m in ("metrics", "coverage", "io", "structures"))
    subprocess.run([sys.executable, "-c", f"import sys, {mods}; assert 'torch' not in sys.modules"], check=True)


def test_garbage_never_crashes_and_is_counted():
    cases = _garbage()
    v = M.validity(list(cases.values()), progress=False)
    assert not v.valid.any()
    got = dict(zip(cases, v.reasons))
    assert got["no_atoms"] == "no_atoms" and got["overlap"] == "overlap"
    assert got["nan_value"].startswith("nan_value") and got["unknown_element"] == "unknown_element"
    assert got["small_volume"].startswith("small_volume") and got["impossible_angles"].startswith("small_volume")
    assert got["negative_length"].startswith("non_positive_lattice")
    assert all(got[k].startswith("bad_input") for k in ("bad_input", "none", "ragged"))
    assert v.comp[list(cases).index("overlap")]  # a single element is compositionally valid (CDVAE)


def test_adit_angle_window_is_opt_in(real):
    s = real[0]
    odd = (np.array([site.specie.Z for site in s]), s.frac_coords, np.array(s.lattice.abc), np.array([90, 90, 140.0]))
    assert M.structure_validity(M.to_arrays(odd), angle_window=(50, 130)) == (False, "angle_outside_window")


# ----------------------------------------------------------------------------- invariances
def _variants(s):
    """The same crystal written four other ways."""
    from pymatgen.core import Lattice, Structure
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(s))
    permuted = Structure(s.lattice, [s[i].specie for i in perm], s.frac_coords[perm])
    shifted = Structure(s.lattice, s.species, (s.frac_coords + rng.random(3)) % 1.0)
    supercell = s.copy()
    supercell.make_supercell([2, 1, 1])
    t = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # unimodular: another basis of the same lattice
    rebased = Structure(Lattice(t @ s.lattice.matrix), s.species, s.cart_coords, coords_are_cartesian=True)
    return [permuted, shifted, supercell, rebased]


def test_equivalent_cells_match_and_keep_validity(real):
    s = real[1]
    variants = _variants(s)
    ref = [s] * len(variants)
    r = M.reconstruction_metrics(ref, variants, protocol=P, gate="none", progress=False)
    assert r[f"{P}/match_rate_pct"] == 100.0 and r[f"{P}/rmse"] < 1e-4
    v0, vs = M.validity([s], progress=False), M.validity(variants, progress=False)
    assert (vs.struct == v0.struct[0]).all() and (vs.comp == v0.comp[0]).all()


def test_prereduced_fits_equal_the_matchers_own(real):
    # Uniqueness and novelty reduce each crystal once (M._reduce, public pymatgen calls) and then fit with
    # skip_structure_reduction; this fails if pymatgen's fit starts to prepare cells differently.
    m = M._matcher(**M.MATCHER)
    cells = [real[1], *_variants(real[1]), real[2], real[3]]
    reduced = [M._reduce(M.to_arrays(c)) for c in cells]
    for x, rx in zip(cells, reduced):
        for y, ry in zip(cells, reduced):
            assert m.fit(rx, ry, skip_structure_reduction=True) == m.fit(x, y)


def test_reconstruction_rates_and_gates(real, tmp_path):
    rng = np.random.default_rng(1)
    noisy = [type(s)(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.02, (len(s), 3)),
                     coords_are_cartesian=True) for s in real]
    r = M.reconstruction_metrics(real, noisy, protocol=P, gate="none", progress=False)
    assert r[f"{P}/match_rate_pct"] == 100.0 and 0 < r[f"{P}/rmse"] < 0.05 and r["protocol"] == P
    both = M.reconstruction_metrics(real, noisy, protocol=P, progress=False)
    n_valid = M.validity(real, progress=False).valid.sum()
    assert both[f"{P}/match_rate_pct"] == pytest.approx(100.0 * n_valid / len(real))
    assert both[f"{P}/match_rate_ungated_pct"] == 100.0 and both[f"{P}/smact_version"] == "2.6"
    junk = list(_garbage().values())[: len(real)]
    bad = M.reconstruction_metrics(real, junk, protocol=P, progress=False, per_pair_csv=tmp_path / "pairs.csv")
    assert bad[f"{P}/match_rate_pct"] == 0.0 and np.isnan(bad[f"{P}/rmse"])
    rows = list(csv.DictReader(open(tmp_path / "pairs.csv")))
    assert len(rows) == len(real) and rows[0]["rec_valid"] == "0" and rows[2]["error"] == "ValueError: rec nan_value"
    with pytest.raises(ValueError):
        M.reconstruction_metrics(real, real[:2], progress=False)


def test_generation_uniqueness_novelty_and_csv(real, tmp_path):
    valid = [s for s, ok in zip(real, M.validity(real, progress=False).valid) if ok]
    assert len(valid) >= 3
    a, b = valid[0], valid[1]
    samples = [a, *_variants(a)[:3], b] + list(_garbage().values())[:3]
    out = tmp_path / "per_sample.csv"
    r = M.evaluate_generation(samples, train=[b], per_sample_csv=out, protocol=P, progress=False)
    assert r[f"{P}/n_samples"] == 8 and r[f"{P}/valid_pct"] == pytest.approx(100 * 5 / 8)
    assert r[f"{P}/unique_pct"] == pytest.approx(100 * 2 / 5)  # a (x4 ways) and b
    assert r[f"{P}/novel_pct"] == 50.0 and r[f"{P}/unique_novel_pct"] == pytest.approx(100 / 8)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 8 and rows[0]["valid"] == "1" and rows[0]["novel"] == "1" and rows[4]["novel"] == "0"
    assert {rows[i]["unique_group"] for i in range(4)} == {rows[0]["unique_group"]}
    assert rows[5]["reason"] == "no_atoms"


def test_parallel_equals_serial(real):
    samples = real + list(_garbage().values())
    s = M.evaluate_generation(samples, train=real[:2], protocol=P, progress=False, workers=1)
    p = M.evaluate_generation(samples, train=real[:2], protocol=P, progress=False, workers=2)
    for k in ("valid_pct", "comp_valid_pct", "struct_valid_pct", "unique_pct", "novel_pct", "invalid_reasons"):
        assert s[f"{P}/{k}"] == p[f"{P}/{k}"]


# ----------------------------------------------------------------------------- distribution metrics
def test_coverage_closed_form():
    rng = np.random.default_rng(0)
    ref_s, ref_c = rng.random((20, 61)), rng.random((20, 132)) * 5
    full = coverage_from_fingerprints(ref_s, ref_c, ref_s, ref_c, 20, 0.4, 10.0)
    assert full["cov_recall_pct"] == 100.0 and full["cov_precision_pct"] == 100.0 and full["amsd_recall"] == 0
    half = coverage_from_fingerprints(ref_s[:10], ref_c[:10], ref_s, ref_c, 40, 1e-9, 1e-9)
    assert half["cov_recall_pct"] == 50.0 and half["cov_precision_pct"] == 25.0  # 10 of 40 generated
    far = coverage_from_fingerprints(ref_s + 10, ref_c, ref_s, ref_c, 20, 0.4, 10.0)
    assert far["cov_recall_pct"] == 0.0
    x = np.array([[1.0, np.nan, 3.0], [3.0, np.nan, 3.0]])
    means, stds = fit_scaler(x)
    np.testing.assert_allclose(standardise(x, means, stds), [[-1, 0, 0], [1, 0, 0]])


def test_wasserstein_closed_form():
    ref = ReferenceStats(np.array([1.0, 2.0, 3.0]), np.array([1, 2, 3]), None, None)
    same = wasserstein_metrics(np.array([1.0, 2.0, 3.0]), np.array([1, 2, 3]), np.ones(3, bool), ref)
    assert same["wdist_density"] == 0 and same["wdist_num_elems"] == 0
    shifted = wasserstein_metrics(np.array([2.0, 3.0, 4.0, 99.0]), np.array([2, 3, 4, 9]),
                                  np.array([1, 1, 1, 0], bool), ref)  # the invalid sample is ignored
    assert shifted["wdist_density"] == pytest.approx(1.0) and shifted["n_wdist"] == 3


def test_coverage_with_matminer(real):
    # generated: crystals 0-2 and one unreadable entry; reference: crystals 1-4. Crystals 1 and 2 are in both
    # (distance 0); the five are different compounds, beyond MP-20's cutoffs of each other, so COV-R = 2 of 4
    # reference crystals and COV-P = 2 of 4 generated entries (the unreadable one counts, as in CDVAE)
    pytest.importorskip("matminer")
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
    from scipy.stats import wasserstein_distance
    gen, ref = real[:3] + ["not a crystal"], real[1:5]
    r = M.evaluate_generation(gen, reference=ref, coverage=True, protocol=P, progress=False)
    assert r[f"{P}/cov_recall_pct"] == 50.0 and r[f"{P}/cov_precision_pct"] == 50.0
    # W1 of the densities (g/cm^3) of the three valid generated crystals and the reference
    dens = lambda xs: [s.density for s in xs]  # noqa: E731
    assert r[f"{P}/wdist_density"] == pytest.approx(wasserstein_distance(dens(real[:3]), dens(ref)), rel=1e-9)
    assert r[f"{P}/wdist_density"] > 1.0
    # mean minimum structure distance per reference crystal, from matminer's fingerprints taken here
    site = CrystalNNFingerprint.from_preset("ops")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CrystalNN warns about missing oxidation states
        fp = np.array([np.mean([site.featurize(s, i) for i in range(len(s))], axis=0) for s in real[:5]])
    d = np.linalg.norm(fp[:3, None] - fp[None, 1:5], axis=-1)  # (3 generated, 4 reference)
    assert r[f"{P}/amsd_recall"] == pytest.approx(d.min(0).mean(), rel=1e-6) and d.min(0).mean() > 0.05
    assert r[f"{P}/amsd_precision"] == pytest.approx(d.min(1).mean(), rel=1e-6)
