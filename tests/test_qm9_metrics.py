"""QM9 metrics: agreement with the peers' labels, garbage inputs, invariances, reconstruction, export.

The fixture (tests/data/qm9_metrics/qm9_sample.xyz, see its README) holds 41 real QM9 molecules labelled
by EDM's and ADiT's own evaluation code.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("openbabel")

from rdkit import Chem  # noqa: E402

from unite_sci_modalities.qm9 import bonds, metrics, render  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "qm9_metrics" / "qm9_sample.xyz"
SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def _read_fixture() -> list[dict]:
    lines = FIXTURE.read_text().splitlines()
    mols, i = [], 0
    while i < len(lines):
        n = int(lines[i])
        labels = dict(token.split("=", 1) for token in lines[i + 1].split())
        atoms = [line.split() for line in lines[i + 2 : i + 2 + n]]
        labels["z"] = np.array([SYMBOLS[a[0]] for a in atoms])
        labels["pos"] = np.array([[float(v) for v in a[1:]] for a in atoms])  # Angstrom
        mols.append(labels)
        i += n + 2
    return mols


MOLS = _read_fixture()
ZS = [m["z"] for m in MOLS]
PS = [m["pos"] for m in MOLS]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _garbage() -> dict[str, tuple[object, object]]:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)[:500] * 1.4
    return {
        "empty": (np.zeros(0, int), np.zeros((0, 3))),
        "one atom": ([6], [[0.0, 0.0, 0.0]]),
        "nan": ([6, 1, 1], [[0, 0, 0], [np.nan, 0, 0], [1.1, 0, 0]]),
        "on top of each other": ([6, 6, 8], np.zeros((3, 3))),
        "500 atoms": (rng.choice([1, 6, 7, 8], 500), grid + 0.05 * rng.normal(size=grid.shape)),
        "unknown Z": ([0, 6], [[0, 0, 0], [1.5, 0, 0]]),
        "shape mismatch": ([6, 6, 6], [[0, 0, 0], [1.5, 0, 0]]),
        "huge coordinates": ([6, 6], [[0, 0, 0], [1e6, 0, 0]]),
    }


# ---------------------------------------------------------------------------------------- generation


def test_real_molecules_agree_with_peer_code() -> None:
    """Every per-molecule label equals what EDM's and ADiT's own code gave for the same coordinates."""
    for m in MOLS:
        r = metrics.evaluate_molecule(m["z"], m["pos"])
        assert r.valid == bool(int(m["adit_valid"])), m["qm9_index"]
        assert r.smiles == (m["adit_smiles"] if r.valid else ""), m["qm9_index"]
        assert r.stable == bool(int(m["edm_stable"])), m["qm9_index"]
        assert r.stable_atoms == int(m["edm_stable_atoms"]), m["qm9_index"]
        assert r.edm_valid == bool(int(m["edm_valid"])), m["qm9_index"]
        assert not r.rejected and r.connected == r.valid


def test_evaluate_generation_summary_and_csv(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    out = metrics.evaluate_generation(ZS, PS, None, path, workers=1, progress=False)
    assert out["num_samples"] == len(MOLS)
    assert out["adit/validity"] == 100.0 and out["connected_validity"] == 100.0
    assert out["edm/validity"] == 100.0
    assert out["edm/molecule_stability"] >= 90.0 and out["edm/atom_stability"] >= 99.0
    assert out["adit/uniqueness"] == 100.0 and out["invalid_input"] == 0.0
    assert "adit/novelty" not in out  # no training set given
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(MOLS)
    assert {"index", "valid", "reason", "smiles", "stable", "connected"} <= set(rows[0])


def test_parallel_equals_serial(tmp_path: Path) -> None:
    serial = metrics.evaluate_generation(ZS, PS, None, tmp_path / "a.csv", workers=1, progress=False)
    parallel = metrics.evaluate_generation(ZS, PS, None, tmp_path / "b.csv", workers=2, progress=False)
    assert serial == parallel
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_garbage_is_invalid_with_reason_and_never_crashes() -> None:
    cases = _garbage()
    for name, (z, pos) in cases.items():
        r = metrics.evaluate_molecule(z, pos)
        assert not r.valid and not r.stable and not r.connected, name
        assert r.reason, name
    zs, ps = zip(*cases.values())
    out = metrics.evaluate_generation(list(zs), list(ps), {"C"}, workers=1, progress=False)
    assert out["adit/validity"] == 0.0 and out["edm/molecule_stability"] == 0.0
    assert out["adit/novelty"] == 0.0 and out["adit/uniqueness"] == 0.0
    rec = metrics.reconstruction_metrics(list(zip(zs, ps)), list(zip(zs, ps)), workers=1, progress=False)
    assert rec["reconstruction/match_rate"] < 100.0


def test_shattered_molecule_is_valid_but_not_connected() -> None:
    """1 A of noise leaves most molecules 'valid' for ADiT but none stable or connected (SPEC 6)."""
    rng = np.random.default_rng(0)
    noisy = [p + rng.normal(size=p.shape) for p in PS]
    out = metrics.evaluate_generation(ZS, noisy, None, workers=1, progress=False)
    assert out["adit/validity"] > 50.0
    assert out["connected_validity"] == 0.0 and out["edm/molecule_stability"] == 0.0


def test_novelty_against_training_smiles(tmp_path: Path) -> None:
    cache = tmp_path / "train_smiles.txt"
    train = metrics.training_smiles(ZS[:20], PS[:20], cache, workers=1, progress=False)
    assert len(train) == 20 and cache.is_file()
    assert metrics.training_smiles(ZS[:20], PS[:20], cache, workers=1, progress=False) == train  # from cache
    out = metrics.evaluate_generation(ZS, PS, train, workers=1, progress=False)
    assert out["adit/novelty"] == pytest.approx(100.0 * (len(MOLS) - 20) / len(MOLS))
    assert out["adit/novelty_of_unique"] == out["adit/novelty"]  # all unique here


@pytest.mark.parametrize("seed", [0, 1])
def test_permutation_rotation_translation_invariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for z, pos in zip(ZS, PS):
        a = metrics.evaluate_molecule(z, pos)
        k = rng.permutation(len(z))
        moved = pos[k] @ _random_rotation(rng).T + rng.normal(size=3) * 10.0
        b = metrics.evaluate_molecule(z[k], moved)
        for field in ("valid", "valid_with_h", "smiles", "stable", "stable_atoms", "edm_valid", "connected"):
            assert getattr(a, field) == getattr(b, field), field


def test_edm_bond_orders_closed_form() -> None:
    """Thresholds are table length + margin (pm): C-C single < 164, double < 139, triple < 123."""
    cases = {1.60: 1, 1.38: 2, 1.22: 3, 1.65: 0}
    for d, order in cases.items():
        assert bonds.edm_bond_orders(np.array([6, 6]), np.array([[0, 0, 0], [d, 0, 0]]))[0, 1] == order, d
    methane = np.array(
        [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]
    )
    orders = bonds.edm_bond_orders(np.array([6, 1, 1, 1, 1]), methane)
    assert orders.sum(1).tolist() == [4, 1, 1, 1, 1]
    assert bonds.edm_atom_stable(np.array([6, 1, 1, 1, 1]), orders).all()


def test_toolkits_print_nothing(capfd: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    noisy = [p + rng.normal(size=p.shape) for p in PS[:10]]
    metrics.evaluate_generation(ZS[:10], noisy, None, workers=1, progress=False)
    ref, rec = list(zip(ZS[:10], PS[:10])), list(zip(ZS[:10], noisy))
    metrics.reconstruction_metrics(ref, rec, workers=1, progress=False)
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------------------------------- reconstruction


def test_reconstruction_identical_and_moved() -> None:
    rng = np.random.default_rng(0)
    ref = list(zip(ZS, PS))
    out = metrics.reconstruction_metrics(ref, ref, workers=1, progress=False)
    assert out["reconstruction/match_rate"] == 100.0 and out["reconstruction/rmsd"] < 1e-6
    moved = []
    for z, p in ref:
        k = rng.permutation(len(z))
        moved.append((z[k], p[k] @ _random_rotation(rng).T + 3.0))
    out = metrics.reconstruction_metrics(ref, moved, workers=1, progress=False)
    assert out["reconstruction/match_rate"] == 100.0 and out["reconstruction/rmsd"] < 1e-6


def test_reconstruction_noisy_and_wrong_element(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = list(zip(ZS, PS))
    noisy = [(z, p + 0.005 * rng.normal(size=p.shape)) for z, p in ref]
    out = metrics.reconstruction_metrics(ref, noisy, tmp_path / "rec.csv", workers=1, progress=False)
    assert out["reconstruction/match_rate"] >= 90.0
    assert 0.0 < out["reconstruction/rmsd"] < 0.02  # 0.005 A per coordinate = 0.0087 A RMSD
    wrong = []
    for z, p in ref:
        z2 = z.copy()
        z2[0] = 7 if z[0] != 7 else 6  # first atom is heavy in QM9's order
        wrong.append((z2, p))
    out = metrics.reconstruction_metrics(ref, wrong, workers=1, progress=False)
    assert out["reconstruction/match_rate"] == 0.0 and np.isnan(out["reconstruction/rmsd"])
    rows = list(csv.DictReader((tmp_path / "rec.csv").open()))
    assert len(rows) == len(ref) and {"index", "match", "rmsd", "reason"} <= set(rows[0])


def test_symmetric_rmsd_forgives_swapped_equivalent_atoms() -> None:
    neo = next(m for m in MOLS if m["source"] == "neopentane")
    z, pos = neo["z"], neo["pos"]
    h = np.flatnonzero(z == 1)
    # Two hydrogens of one methyl group: both bonded to the same carbon.
    b = bonds.openbabel_bonds(bonds.openbabel_mol(z, pos))
    parent = {j if z[i] != 1 else i: i if z[i] != 1 else j for i, j in b if (z[i] == 1) != (z[j] == 1)}
    h1, h2 = [x for x in h if parent[x] == parent[h[0]]][:2]
    swapped = pos.copy()
    swapped[[h1, h2]] = swapped[[h2, h1]]
    assert metrics.reconstruction_metrics([(z, pos)], [(z, swapped)], workers=1, progress=False)[
        "reconstruction/rmsd"
    ] < 1e-6
    assert bonds.aligned_rmsd(pos, swapped) > 0.1  # the given atom order alone would not match


def test_aligned_rmsd_closed_form() -> None:
    rng = np.random.default_rng(0)
    pos = PS[0]
    assert bonds.aligned_rmsd(pos, pos @ _random_rotation(rng).T + 5.0) < 1e-9
    shifted = pos.copy()
    shifted[:, 0] *= -1  # mirror image of a chiral molecule: no proper rotation undoes it
    assert bonds.aligned_rmsd(pos, shifted) > 0.1


# ---------------------------------------------------------------------------------------- export


def test_sdf_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "samples.sdf"
    zs = ZS[:5] + [np.array([6, 6])]
    ps = PS[:5] + [np.zeros((2, 3))]  # broken: written with atoms only
    assert render.write_sdf(path, zs, ps) >= 4
    back = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert len(back) == len(zs) and all(m is not None for m in back)
    for m, z, p in zip(back, zs, ps):
        assert [a.GetAtomicNum() for a in m.GetAtoms()] == list(z)
        assert np.abs(m.GetConformer().GetPositions() - p).max() < 1e-4  # SDF keeps 4 decimals
    assert back[0].GetNumBonds() > 0 and back[-1].GetNumBonds() == 0
    assert back[-1].GetProp("bonds") == "none"


def test_gallery_png(tmp_path: Path) -> None:
    path = tmp_path / "gallery.png"
    zs = ZS[:6] + [np.array([6, 6]), np.array([6, 1, 1])]
    ps = PS[:6] + [np.zeros((2, 3)), np.array([[0, 0, 0], [np.nan, 0, 0], [1, 0, 0]])]
    render.gallery_png(path, zs, ps, n=16)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
