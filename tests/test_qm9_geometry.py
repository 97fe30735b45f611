"""QM9 geometry diagnostics: identity and closed forms, a hand-built water molecule, invariances, the PNG."""
import dataclasses

import numpy as np
import pytest

from unite_sci.config import build_config
from unite_sci_modalities.molecules import geometry as G
from unite_sci_modalities.qm9.adapter import QM9Adapter, QM9Config

SMALL = ["data.num_train=400", "data.num_val=16", "data.num_test=200", "data.eval_workers=1",
         "data.novelty=false"]


@pytest.fixture(scope="module")
def qm9():
    """A small adapter (reference = its 400 training molecules) and (train, test) molecule lists."""
    a = QM9Adapter(build_config("qm9", QM9Config, [], SMALL).data)
    train, test = a.molecules("train"), a.molecules("test")
    return a, list(zip(train.z, train.pos)), list(zip(test.z, test.pos))


def geo(mols):
    return G.measure([m[0] for m in mols], [m[1] for m in mols])


def test_training_molecules_against_themselves_score_zero(qm9):
    a, train, _ = qm9
    m = G.compare(geo(train), a.geometry_reference())
    assert m["geometry/bond_w1_mean"] == 0 and m["geometry/angle_w1_mean"] == 0
    assert all(m[k] == 0 for k in m if "_w1" in k or "_tv" in k)
    assert {"geometry/bond_w1/C-H", "geometry/bond_w1/C-C", "geometry/bond_w1/O-H", "geometry/angle_w1/C-C-H",
            "geometry/valency_tv/C"} <= set(m)
    assert m["geometry/num_molecules"] == len(train)


def test_test_molecules_are_close_to_training_molecules(qm9):
    a, _, test = qm9
    m = G.compare(geo(test), a.geometry_reference())
    assert 0 < m["geometry/bond_w1_mean"] < 0.01  # Angstrom
    assert 0 < m["geometry/angle_w1_mean"] < 3.0  # degrees
    assert m["geometry/atom_type_tv"] < 0.03 and m["geometry/valency_tv"] < 0.03


def test_scaled_lengths_match_the_closed_form(qm9):
    """W1(X, sX) = (s - 1) E[X] for X > 0: the quantile functions differ by the factor s everywhere."""
    a, _, _ = qm9
    ref = a.geometry_reference()
    m = G.compare(dataclasses.replace(ref, bond_length=1.05 * ref.bond_length), ref)
    for code, _ in G.bond_types(ref):
        mean = ref.bond_length[ref.bond_code == code].mean()
        assert m[f"geometry/bond_w1/{G.type_name(code)}"] == pytest.approx(0.05 * mean, rel=1e-9)
    kept = np.isin(ref.bond_code, [c for c, _ in G.bond_types(ref)])
    assert m["geometry/bond_w1_mean"] == pytest.approx(0.05 * ref.bond_length[kept].mean(), rel=1e-9)


def test_stretched_molecules_raise_bond_w1_by_five_percent(qm9):
    """End to end, through EDM's bond rule. Types whose bonds all survive the stretch obey the closed form
    (to float32 rounding); where the longest bonds pass the rule's threshold (C-C, C-O, C-N) the W1 is
    a little smaller, as the most stretched bonds leave the distribution."""
    a, train, _ = qm9
    ref = a.geometry_reference()
    gen = geo([(z, 1.05 * p) for z, p in train])
    m = G.compare(gen, ref)
    exact = 0
    for code, count in G.bond_types(ref):
        name = G.type_name(code)
        w1, closed = m[f"geometry/bond_w1/{name}"], 0.05 * ref.bond_length[ref.bond_code == code].mean()
        if (gen.bond_code == code).sum() == count:
            assert w1 == pytest.approx(closed, rel=1e-5), name
            exact += 1
        else:
            assert 0.8 * closed < w1 < closed, name
    assert exact >= 3  # C-H, N-H, O-H at least
    assert m["geometry/angle_w1_mean"] < 2.0  # angles do not scale; only the lost bonds move them


def water(angle_deg=104.5, r=0.9572):
    h = np.radians(angle_deg / 2)
    pos = np.array([[0, 0, 0], [r * np.sin(h), r * np.cos(h), 0], [-r * np.sin(h), r * np.cos(h), 0]])
    return np.array([8, 1, 1]), pos


def test_water_has_its_angle_lengths_and_valencies():
    g = G.measure(*zip(water()))
    assert [G.type_name(c) for c in g.angle_code] == ["H-O-H"]
    assert g.angle_deg[0] == pytest.approx(104.5, abs=1e-9)
    assert [G.type_name(c) for c in g.bond_code] == ["O-H", "O-H"]
    assert np.allclose(g.bond_length, 0.9572)
    assert g.atom_valency.tolist() == [2, 1, 1]
    assert g.min_dist[0] == pytest.approx(0.9572)  # the O-H arms; H...H is 1.51 A


def test_metrics_are_invariant_to_rotation_translation_and_atom_order(qm9):
    a, _, test = qm9
    rng = np.random.default_rng(0)
    moved = []
    for z, p in test:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        k = rng.permutation(len(z))
        moved.append((z[k], p[k] @ q.T + rng.normal(size=3) * 10))
    ref = a.geometry_reference()
    m0, m1 = G.compare(geo(test), ref), G.compare(geo(moved), ref)
    assert m0.keys() == m1.keys()
    assert all(np.isclose(m0[k], m1[k], rtol=1e-6, atol=1e-6) for k in m0)


def test_garbage_is_skipped_or_measured_without_error():
    rng = np.random.default_rng(1)
    z, p = zip(*[
        (np.zeros(0, int), np.zeros((0, 3))),  # skipped
        (np.array([6, 8]), np.array([[0, 0, 0], [np.inf, 0, 0]])),  # skipped
        (np.array([6, 6, 8, 1, 1] * 100), np.ones((500, 3))),  # all in one point: bonds, no angles
        (rng.choice([1, 6, 7, 8], 12), rng.normal(size=(12, 3))),
        water(),
    ])
    g = G.measure(z, p)
    assert g.num_skipped == 2 and g.num_molecules == 3
    assert np.isfinite(g.angle_deg).all() and (g.bond_length[: 500 * 499 // 2] == 0).any()
    assert int((g.min_dist < 0.1).sum()) == 1  # the atoms piled on one point
    assert np.isfinite(G.compare(g, G.measure(*zip(water())))["geometry/min_dist_w1"])


def test_reference_cache_round_trip(qm9, tmp_path):
    _, train, _ = qm9
    z, p = [m[0] for m in train[:50]], [m[1] for m in train[:50]]
    first = G.reference(z, p, tmp_path / "ref.npz")
    again = G.reference(z, p, tmp_path / "ref.npz")
    assert all(np.array_equal(getattr(first, f.name), getattr(again, f.name))
               for f in dataclasses.fields(G.Geometry))
    other = G.reference(z[:10], p[:10], tmp_path / "ref.npz")  # other molecules: measured again
    assert other.num_molecules == 10


def test_adapter_evaluate_writes_the_histogram_png(qm9, tmp_path):
    a, _, test = qm9
    m = a.evaluate(test[:20], str(tmp_path / "per_sample.csv"))
    png = tmp_path / "bond_lengths.png"
    assert m["geometry/histogram_png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(png).shape[:2] == (270 * 3, 360 * 3)  # 3 x 3 panels of 4 x 3 inches at 90 dpi
    assert "400" in m["geometry/reference"] and "edm/molecule_stability" in m
    assert np.isfinite(m["geometry/bond_w1_mean"])
    assert "geometry/histogram_png" not in a.evaluate(test[:3])  # no CSV folder, no picture
