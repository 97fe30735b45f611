"""Space groups of crystals (modalities/crystals/symmetry.py) against known prototypes."""
import numpy as np
import pytest

pytest.importorskip("pymatgen")
from pymatgen.core import Lattice, Structure  # noqa: E402

from unite_sci_modalities.crystals import symmetry as S  # noqa: E402


def _rocksalt() -> Structure:  # NaCl, Fm-3m (225)
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _perovskite() -> Structure:  # SrTiO3, Pm-3m (221)
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _wurtzite() -> Structure:  # ZnO, P6_3mc (186)
    return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])


def test_known_prototypes_and_tolerance():
    assert S.space_group_task(_rocksalt()) == 225
    assert S.space_group_task(_perovskite()) == 221
    assert S.space_group_task(_wurtzite()) == 186
    # 0.01 A of noise: inside symprec 0.1 A the group survives, at pymatgen's default 0.01 A it is lost
    rng = np.random.default_rng(0)
    s = _perovskite()
    noisy = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.01, (len(s), 3)),
                      coords_are_cartesian=True)
    assert S.space_group_task(noisy) == 221
    assert S.space_group_task(noisy, symprec=0.01) == 1  # P1


def test_unbuildable_items_get_zero_and_accepted_forms():
    tup = ([11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], [4.0, 4.0, 4.0], [90, 90, 90])  # CsCl-type, Pm-3m
    assert S.space_group_task(tup) == 221
    assert S.space_group_task(([], np.zeros((0, 3)), [4, 4, 4], [90, 90, 90])) == 0
    assert S.space_group_task("garbage") == 0
    assert S.space_group_task(([11], [[0, 0, 0]], [np.nan, 4, 4], [90, 90, 90])) == 0
    sg = S.space_groups([_rocksalt(), "garbage", _wurtzite()], workers=1, progress=False)
    assert sg.tolist() == [225, 0, 186]


def test_crystal_systems_follow_the_international_tables():
    sg = np.array([0, 1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230])
    assert S.crystal_system(sg).tolist() == [-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def test_metrics_against_hand_counts():
    ref = np.array([225, 225, 221, 1, 0])                       # one unassigned: left out
    gen = np.array([225, 1, 1, 186, 62])
    valid = np.array([True, True, True, True, False])            # the invalid 62 is left out
    m = S.space_group_metrics(gen, valid, ref)
    assert m["space_group_p1_pct"] == pytest.approx(50.0)       # 2 of 4 valid
    assert m["space_group_ref_p1_pct"] == pytest.approx(25.0)   # 1 of 4 assigned
    # histograms: gen {225: .25, 1: .5, 186: .25}, ref {225: .5, 221: .25, 1: .25}
    assert m["space_group_tv"] == pytest.approx(0.5 * (0.25 + 0.25 + 0.25 + 0.25))
    # systems: gen {cubic .25, triclinic .5, hexagonal .25}, ref {cubic .75, triclinic .25}
    assert m["crystal_system_tv"] == pytest.approx(0.5 * (0.5 + 0.25 + 0.25))
    assert m["space_group_distinct"] == 3
    same = S.space_group_metrics(ref, np.ones(5, bool), ref)
    assert same["space_group_tv"] == 0.0 and same["crystal_system_tv"] == 0.0
    empty = S.space_group_metrics(gen, np.zeros(5, bool), ref)
    assert np.isnan(empty["space_group_p1_pct"]) and np.isnan(empty["space_group_tv"])


def test_reference_cache_and_plot(tmp_path):
    items = [_rocksalt(), _perovskite(), _wurtzite()]
    a = S.reference_space_groups(items, tmp_path, workers=1, progress=False)
    files = list(tmp_path.glob("space_groups-*.npy"))
    assert a.tolist() == [225, 221, 186] and len(files) == 1
    np.save(files[0], np.array([1, 1, 1]))  # the cache is what is read the second time
    assert S.reference_space_groups(items, tmp_path, workers=1, progress=False).tolist() == [1, 1, 1]
    # a different tolerance is a different cache entry
    assert S.reference_space_groups(items, tmp_path, workers=1, symprec=0.05,
                                    progress=False).tolist() == [225, 221, 186]
    png = tmp_path / "sg.png"
    S.plot_space_groups(np.array([225, 1, 1]), np.ones(3, bool), a, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_long_reference_build_is_announced_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(S, "NOTICE_MIN_ITEMS", 2)  # the real threshold is hundreds of crystals
    items = [_rocksalt(), _perovskite(), _wurtzite()]
    S.reference_space_groups(items, tmp_path, workers=1, progress=False)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: finding the space groups of 3 reference crystals")
    S.reference_space_groups(items, tmp_path, workers=1, progress=False)  # cached: nothing to announce
    assert "note:" not in capsys.readouterr().err
