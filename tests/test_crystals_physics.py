"""Crystal physics: the hull against hand-computed answers, the elemental-reference fit, CHGNet relaxation,
and the shipped references on real MP-20 crystals (a DFT-stable crystal near the hull, a crushed one far
above it)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("chgnet")

from unite_sci.errors import DataError  # noqa: E402
from unite_sci_modalities.crystals import hull as H  # noqa: E402
from unite_sci_modalities.crystals import physics as P  # noqa: E402

LI, O, NA, CL = 3, 8, 11, 17


def test_hull_distances_match_the_hand_computed_answers():
    # Li-O with LiO at -1.0 eV/atom and Li2O at -0.5: the hull at x_O = 1/3 is the line from Li (0) to LiO
    # (-1.0 at x_O = 1/2): -2/3 eV/atom; Li2O at -0.5 lies 1/6 above it
    hull = H.Hull([{LI: 1, O: 1}, {LI: 2, O: 1}], np.array([-1.0, -0.5]))
    assert hull.e_above_hull({LI: 1, O: 1}, -0.9) == pytest.approx(0.1)
    assert hull.e_above_hull({LI: 2, O: 1}, -0.5) == pytest.approx(1 / 6)
    assert hull.e_above_hull({LI: 1, O: 1}, -1.2) == pytest.approx(-0.2)  # below the hull: negative
    assert hull.e_above_hull({LI: 1}, 0.3) == pytest.approx(0.3)  # an element against its own reference
    assert np.isnan(hull.e_above_hull({LI: 1, O: 1}, float("nan")))
    # another chemical system does not see Li-O's entries
    assert hull.e_above_hull({NA: 1, CL: 1}, -0.1) == pytest.approx(-0.1)


def test_fit_mu_recovers_known_references():
    rng = np.random.default_rng(0)
    mu = {LI: -1.9, O: -4.9, NA: -1.3, CL: -1.8}
    zs, ef, e = [], [], []
    for _ in range(60):
        n = rng.integers(2, 8)
        z = rng.choice(list(mu), size=n)
        f = rng.normal(-1, 0.5)
        zs.append(z)
        ef.append(f)
        e.append(f + sum(mu[int(a)] for a in z) / n)
    fit = H.fit_mu(zs, np.array(e), np.array(ef))
    assert fit == pytest.approx(mu, abs=1e-6)
    refs = H.References(fit)
    assert refs.formation_energy(zs[0], e[0]) == pytest.approx(ef[0], abs=1e-6)
    assert np.isnan(refs.formation_energy(np.array([26]), -8.0))  # Fe: no reference, no value


def test_references_refuse_a_changed_file(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"mu": {"3": -1.9}}))
    assert H.References.load(path).mu == {3: -1.9}
    with pytest.raises(DataError, match="sha256"):
        H.References.load(path, sha256="0" * 64)


def _nacl(a: float = 5.6):
    """Rock salt's primitive cell: two atoms, fcc lattice (a / sqrt 2, 60 degrees)."""
    return (np.array([NA, CL]), np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), np.full(3, a / 2 ** 0.5),
            np.full(3, 60.0))


def test_relaxing_a_distorted_crystal_lowers_its_energy_and_moves_its_atoms():
    z, frac, lengths, angles = _nacl()
    rng = np.random.default_rng(0)
    shaken = (z, (frac + rng.normal(0, 0.03, frac.shape)) % 1.0, lengths * 1.06, angles + [2.0, -1.0, 0.0])
    row = P.relax_task(shaken, P.RelaxSettings(fmax=0.05, steps=300))
    assert row["converged"] and row["fmax_final_ev_per_a"] <= 0.06
    assert row["energy_after_ev_per_atom"] < row["energy_before_ev_per_atom"] - 0.01
    assert row["rmsd_a"] > 0.02 and 0 < row["steps"] <= 300
    assert len(row["arrays"][0]) == 2


def test_a_crystal_that_cannot_be_built_gets_a_row_with_its_reason():
    rows = P.relax_all([(np.array([NA]), np.zeros((1, 3)), np.full(3, np.nan), np.full(3, 90.0))],
                       P.RelaxSettings(), workers=1, time_limit_s=60, progress=False)
    assert rows[0]["error"] and not rows[0]["converged"]


def test_move_rmsd_takes_the_nearest_image():
    a = (np.array([NA]), np.array([[0.99, 0, 0]]), np.full(3, 10.0), np.full(3, 90.0))
    b = (np.array([NA]), np.array([[0.01, 0, 0]]), np.full(3, 10.0), np.full(3, 90.0))
    assert P.move_rmsd(a, b) == pytest.approx(0.2)


def test_stability_shares():
    e = np.array([-0.01, 0.05, 0.3, np.nan])
    m = P.stability_metrics(e, unique=np.array([1, 1, 1, 1]), novel=np.array([1, 0, 1, 1]))
    assert (m["stable_pct"], m["metastable_pct"], m["sun_pct"], m["msun_pct"]) == (25.0, 50.0, 25.0, 25.0)
    assert m["e_hull_unknown"] == 1


@pytest.mark.skipif(not H.REFS_FILE.is_file(), reason="references not fitted")
def test_shipped_references_put_a_real_stable_crystal_near_the_hull_and_a_crushed_one_far_above():
    """GaTe (mp-10009, MP-20 test split, DFT e_above_hull 0): near 0 on the CHGNet, MP-20 hull, its test row
    left out; the same cell with two atoms pushed to 0.6 A apart is far above."""
    from unite_sci.engine import load_config, make_adapter
    from unite_sci_modalities.crystals.stability import hull_files

    adapter = make_adapter(load_config("mp20"))
    test = adapter.build_splits()["test"]
    i = test.ids.index("mp-10009")
    z, frac, lengths, angles = test[i][:4]
    refs = H.References.load()
    hull = H.Hull(*H.read_formation_energies(hull_files(adapter), exclude_ids={"mp-10009"})[:2])
    e = P.static_energies([(z, frac, lengths, angles)], progress=False)  # DFT-relaxed: a CHGNet near-minimum
    _, eh = P.e_above_hull([z], e, refs, hull)
    assert abs(eh[0]) < 0.1
    crushed = frac.copy()
    from pymatgen.core import Lattice
    lat = Lattice.from_parameters(*lengths, *angles)
    crushed[1] = crushed[0] + lat.get_fractional_coords([0.6, 0, 0])
    e_bad = P.static_energies([(z, crushed % 1.0, lengths, angles)], progress=False)
    _, eh_bad = P.e_above_hull([z], e_bad, refs, hull)
    assert eh_bad[0] > 1.0
