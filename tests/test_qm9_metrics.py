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

from unite_sci_modalities.molecules import bonds, metrics, render  # noqa: E402
from unite_sci_modalities.molecules import protocols  # noqa: E402

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


def _unusable() -> dict[str, tuple[object, object]]:
    """Inputs no toolkit can take: refused with a reason before any protocol runs."""
    too_many = protocols.MAX_ATOMS + 1
    return {
        "empty": (np.zeros(0, int), np.zeros((0, 3))),
        "nan": ([6, 1, 1], [[0, 0, 0], [np.nan, 0, 0], [1.1, 0, 0]]),
        "unknown Z": ([0, 6], [[0, 0, 0], [1.5, 0, 0]]),
        "shape mismatch": ([6, 6, 6], [[0, 0, 0], [1.5, 0, 0]]),
        "huge coordinates": ([6, 6], [[0, 0, 0], [1e6, 0, 0]]),
        "too many atoms": (np.ones(too_many, int), np.zeros((too_many, 3))),
    }


def _degenerate() -> dict[str, tuple[object, object]]:
    """Odd but usable molecules: the peers judge them, so the protocols must too."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)[:500] * 1.4
    return {
        "one atom": ([6], [[0.0, 0.0, 0.0]]),
        "on top of each other": ([6, 6, 8], np.zeros((3, 3))),
        "500 atoms": (rng.choice([1, 6, 7, 8], 500), grid + 0.05 * rng.normal(size=grid.shape)),
    }


def _pymatgen_adit(z: np.ndarray, pos: np.ndarray) -> tuple[bool, str, int]:
    """ADiT's own route, (valid, SMILES of the first largest fragment, fragments), as its evaluator runs it."""
    pmg = pytest.importorskip("pymatgen.core")
    block = pmg.Molecule(species=[int(x) for x in z], coords=pos).to(fmt="pdb")  # ADiT writes this to a file
    mol = Chem.MolFromPDBBlock(block, removeHs=True)
    if mol is None:
        return False, "", 0
    frags = Chem.GetMolFrags(mol, asMols=True)
    sizes = [f.GetNumAtoms() for f in frags]
    return True, Chem.MolToSmiles(frags[sizes.index(max(sizes))], isomericSmiles=True), len(frags)


# QM9 index 123721 (EDM test split, position 11303), 0.08 A of Gaussian noise on every coordinate, rounded to
# 1 mA. OpenBabel perceives it as valid in this order; swapping atoms 0 (C) and 7 (N) makes it invalid.
ORDER_Z = np.array([6, 6, 6, 6, 6, 7, 6, 7, 7, 1, 1, 1, 1, 1, 1, 1])
ORDER_POS = np.array([
    [-0.664, 1.481, -0.363], [0.502, 2.157, -0.021], [1.7, 1.33, 0.207], [1.839, -0.329, 0.372],
    [0.466, -0.712, 0.092], [0.084, -1.759, 0.175], [-1.174, -1.776, -0.088], [-1.672, -0.788, -0.337],
    [-0.582, 0.135, -0.111], [-1.513, 1.918, 0.631], [-1.163, 1.834, -1.529], [0.818, 3.138, -0.024],
    [2.665, 1.873, 0.496], [2.572, -0.622, -0.362], [2.093, -0.434, 1.33], [-1.845, -2.856, -0.29],
])  # fmt: skip
ORDER_SMILES = "C1=CC[C@]23N=C2NN3C1"


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
    # the peers' labels give the exact rates: 39 of 41 molecules stable (95.12), 99.47 % of the atoms
    stable_mols = sum(int(m["edm_stable"]) for m in MOLS)
    stable_atoms = sum(int(m["edm_stable_atoms"]) for m in MOLS) / sum(len(z) for z in ZS)
    assert stable_mols == 39 and out["edm/molecule_stability"] == pytest.approx(100 * 39 / 41)  # 95.12
    assert out["edm/atom_stability"] == pytest.approx(100 * stable_atoms) == pytest.approx(99.473, abs=1e-3)
    assert out["adit/uniqueness"] == 100.0 and out["invalid_input"] == 0.0
    assert out["too_close_fraction"] == 0.0
    for key in ("canonical/validity", "canonical/connected_validity", "canonical/uniqueness"):
        assert out[key] == 100.0, key
    assert "adit/novelty" not in out  # no training set given
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(MOLS)
    assert {"index", "valid", "reason", "smiles", "stable", "connected", "too_close", "min_pair_distance",
            "canonical_valid", "canonical_smiles", "canonical_connected"} <= set(rows[0])


def test_parallel_equals_serial(tmp_path: Path) -> None:
    serial = metrics.evaluate_generation(ZS, PS, None, tmp_path / "a.csv", workers=1, progress=False)
    parallel = metrics.evaluate_generation(ZS, PS, None, tmp_path / "b.csv", workers=2, progress=False)
    assert serial == parallel
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_unusable_input_is_refused_with_reason_and_never_crashes() -> None:
    cases = _unusable()
    for name, (z, pos) in cases.items():
        r = metrics.evaluate_molecule(z, pos)
        assert r.rejected and r.reason, name
        verdicts = (r.valid, r.valid_with_h, r.connected, r.stable, r.edm_valid, r.canonical_valid)
        assert not any(verdicts), name
    zs, ps = zip(*cases.values())
    out = metrics.evaluate_generation(list(zs), list(ps), {"C"}, workers=1, progress=False)
    assert out["invalid_input"] == 100.0 and out["too_close_fraction"] == 0.0
    assert out["adit/validity"] == 0.0 and out["edm/molecule_stability"] == 0.0
    # no valid molecule: uniqueness and novelty are shares of an empty set, undefined rather than 0
    assert np.isnan(out["adit/novelty"]) and np.isnan(out["adit/uniqueness"])
    rec = metrics.reconstruction_metrics(list(zip(zs, ps)), list(zip(zs, ps)), workers=1, progress=False)
    assert rec["reconstruction/match_rate"] == 0.0


def test_degenerate_molecules_are_judged_as_the_peers_judge_them() -> None:
    """Neither peer rejects a lone atom or atoms on one point: their protocols run and give a verdict."""
    cases = _degenerate()
    records = {name: metrics.evaluate_molecule(z, pos) for name, (z, pos) in cases.items()}
    assert not any(r.rejected for r in records.values())
    lone, pile = records["one atom"], records["on top of each other"]
    # EDM: a carbon with no bond has valence 0 (unstable); the bare graph sanitises (implicit hydrogens).
    assert lone.valid and lone.smiles == "C" and lone.connected and not lone.stable and lone.edm_valid
    # Three single-atom fragments: ADiT takes the first (C); EDM's tables give C#C and C#O bonds at 0 A.
    assert pile.too_close and pile.min_pair_distance == 0.0 and not lone.too_close
    assert pile.valid and pile.smiles == "C" and not pile.connected
    assert not pile.stable and not pile.edm_valid and pile.stable_atoms == 0
    for name, (z, pos) in cases.items():
        valid, smiles, n_frags = _pymatgen_adit(np.asarray(z), np.asarray(pos, float))
        r = records[name]
        assert (r.valid, r.smiles, r.connected) == (valid, smiles, valid and n_frags == 1), name


def test_adit_judges_atoms_in_the_order_given() -> None:
    """OpenBabel's perception depends on atom order; ADiT hands it the atoms as emitted, and so must we."""
    swap = np.arange(len(ORDER_Z))
    swap[[0, 7]] = [7, 0]
    given = metrics.evaluate_molecule(ORDER_Z, ORDER_POS)
    swapped = metrics.evaluate_molecule(ORDER_Z[swap], ORDER_POS[swap])
    assert given.valid and given.smiles == ORDER_SMILES and given.connected
    assert not swapped.valid and not swapped.connected and swapped.reason
    # The order-invariant variant gives one verdict for both orders.
    assert given.canonical_valid and swapped.canonical_valid
    assert given.canonical_smiles == swapped.canonical_smiles
    # EDM's tables do not care about order.
    for field in ("stable", "stable_atoms", "edm_valid"):
        assert getattr(given, field) == getattr(swapped, field), field
    assert _pymatgen_adit(ORDER_Z, ORDER_POS) == (True, ORDER_SMILES, 1)
    assert not _pymatgen_adit(ORDER_Z[swap], ORDER_POS[swap])[0]


def test_adit_hands_openbabel_the_input_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The atoms reach OpenBabel, and so the PDB block, exactly as given (the canonical variant runs second)."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = protocols.openbabel_mol

    def spy(z: np.ndarray, pos: np.ndarray):  # noqa: ANN202
        seen.append((np.asarray(z).copy(), np.asarray(pos).copy()))
        return real(z, pos)

    monkeypatch.setattr(protocols, "openbabel_mol", spy)
    z, pos = ZS[0], PS[0]
    k = np.random.default_rng(0).permutation(len(z))
    metrics.evaluate_molecule(z[k], pos[k])
    assert len(seen) == 2  # ADiT's route, then the canonical variant
    assert np.array_equal(seen[0][0], z[k]) and np.array_equal(seen[0][1], pos[k])
    pdb = bonds.pdb_block(real(z[k], pos[k]))
    elements = [line[76:78].strip() for line in pdb.splitlines() if line.startswith("HETATM")]
    assert elements == [Chem.GetPeriodicTable().GetElementSymbol(int(x)) for x in z[k]]


def test_largest_fragment_tie_goes_to_the_first_as_in_adit() -> None:
    nh3 = np.array([[0, 0, 0], [1.01, 0, 0], [-0.34, 0.95, 0], [-0.34, -0.48, 0.82]])
    h4 = [[0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]
    ch4 = np.array([[0, 0, 0], *h4], dtype=float)
    ch4 += [6.0, 0, 0]  # 6 A from the ammonia: two fragments of one heavy atom each
    n_first = metrics.evaluate_molecule([7, 1, 1, 1, 6, 1, 1, 1, 1], np.vstack([nh3, ch4]))
    c_first = metrics.evaluate_molecule([6, 1, 1, 1, 1, 7, 1, 1, 1], np.vstack([ch4, nh3]))
    assert (n_first.smiles, c_first.smiles) == ("N", "C")  # one heavy atom each: the first fragment wins
    assert n_first.valid and not n_first.connected and n_first.stable  # EDM: both fragments are fine
    assert n_first.canonical_smiles == c_first.canonical_smiles == "C"  # the variant: smallest SMILES


def test_close_pair_is_judged_by_edm_tables_not_rejected() -> None:
    """H-C#C-H with the carbons 0.05 A apart: EDM's tables give C#C (5 pm < 120 + 3) and one C-H each
    (116 pm < 109 + 10, 121 pm is not), so EDM calls it stable and valid; it is only flagged too close."""
    z = np.array([6, 6, 1, 1])
    pos = np.array([[0.0, 0, 0], [0.05, 0, 0], [-1.16, 0, 0], [1.21, 0, 0]])
    r = metrics.evaluate_molecule(z, pos)
    assert not r.rejected and r.too_close and r.min_pair_distance == pytest.approx(0.05)
    assert r.stable and r.stable_atoms == 4 and r.edm_valid and r.unstable == ""
    assert (r.valid, r.smiles, r.connected) == (True, "C", False)  # OpenBabel does not bond atoms < 0.4 A apart
    out = metrics.evaluate_generation([z, ZS[0]], [pos, PS[0]], None, workers=1, progress=False)
    assert out["too_close_fraction"] == 50.0 and out["invalid_input"] == 0.0
    assert out["edm/molecule_stability"] == 100.0 and out["edm/validity"] == 100.0
    valid, smiles, n_frags = _pymatgen_adit(z, pos)
    assert (valid, smiles, n_frags) == (True, "C", 2)


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
    """EDM's and the canonical verdicts ignore atom order and pose; ADiT's ignore pose (order matters there)."""
    rng = np.random.default_rng(seed)
    for z, pos in zip(ZS, PS):
        a = metrics.evaluate_molecule(z, pos)
        rotation, shift = _random_rotation(rng), rng.normal(size=3) * 10.0
        k = rng.permutation(len(z))
        b = metrics.evaluate_molecule(z[k], pos[k] @ rotation.T + shift)
        c = metrics.evaluate_molecule(z, pos @ rotation.T + shift)
        for field in ("stable", "stable_atoms", "edm_valid", "canonical_valid", "canonical_smiles"):
            assert getattr(a, field) == getattr(b, field), field
        for field in ("valid", "valid_with_h", "smiles", "connected"):
            assert getattr(a, field) == getattr(c, field), field


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


# Real QM9 test molecules with methyl groups, as the data set spells them. The last, 2,2,3,4,4-pentamethyl-
# oxetane, has 62,208 automorphisms: more than the matcher tried before it was RDKit's GetBestRMS (40,000).
METHYL_MOLECULES = ("CCCC(O)C(C)(C)C", "CC(C)C1(CO)CN1C", "COC1CCC1C(C)O", "CC1C(C)(C)OC1(C)C")


def test_symmetric_rmsd_equals_kabsch_in_the_true_order_on_real_molecules() -> None:
    from unite_sci_modalities.qm9.data import load_split

    test = load_split("test")
    picked = [i for i, s in enumerate(test.smiles) if s in METHYL_MOLECULES]
    assert len(picked) == len(METHYL_MOLECULES)
    rng = np.random.default_rng(0)
    for i in np.repeat(picked, 5):  # the old cap missed the oxetane's best match in 4 shuffles of 10
        z, pos = test.z[i], test.pos[i].astype(np.float64)
        noisy = pos + 0.01 * rng.normal(size=pos.shape)
        expected = float(bonds.aligned_rmsd(pos, noisy))  # at 0.01 A no swap of equivalent atoms fits better
        k = rng.permutation(len(z))
        moved = noisy[k] @ _random_rotation(rng).T + 2.0
        assert bonds.aligned_rmsd(pos, moved) > 0.1  # the shuffled order alone does not match
        b = bonds.openbabel_bonds(bonds.openbabel_mol(z, pos))
        new_index = np.argsort(k)
        b_moved = sorted((min(new_index[u], new_index[v]), max(new_index[u], new_index[v])) for u, v in b)
        assert bonds.symmetric_rmsd(z, pos, b, z[k], moved, b_moved) == pytest.approx(expected, abs=1e-6)


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
    zs = ZS[:5] + [np.array([0, 6])]
    ps = PS[:5] + [np.array([[0.0, 0, 0], [1.5, 0, 0]])]  # unusable (Z = 0): written with atoms only
    assert render.write_sdf(path, zs, ps) >= 4
    # not sanitised: a record whose perceived bonds RDKit refuses ('perceived, unsanitised') is kept too
    back = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
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
    captions = render.gallery_png(path, zs, ps, n=16, per_row=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [c.splitlines()[0] for c in captions] == [f"#{i}: {len(z)} atoms" for i, z in enumerate(zs)]
    assert all(len(c.splitlines()) >= 2 for c in captions)  # the SMILES or why it is invalid, always
    assert "invalid" in captions[-1]  # the NaN coordinate


def test_every_gallery_cell_has_a_caption_even_when_rdkit_draws_nothing(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.image as mpimg

    drawn = render._cell_image
    calls = iter(range(100))
    monkeypatch.setattr(render, "_cell_image",  # the second cell comes out blank, as two real samples did
                        lambda mol, px: (None, "RDKit drew nothing (degenerate 2-D layout)") if next(calls) == 1
                        else drawn(mol, px))
    path = tmp_path / "g.png"
    captions = render.gallery_png(path, ZS[:2], PS[:2], per_row=2, titles=["input 0", "output 0"])
    assert captions[0].startswith("input 0: ") and "could not draw" not in captions[0]
    assert captions[1].startswith("output 0: ")
    assert captions[1].replace("\n", " ").endswith("could not draw: RDKit drew nothing (degenerate 2-D layout)")
    image = mpimg.imread(path)
    h, w = image.shape[:2]
    left, right = image[:, : w // 2, :3], image[:, w // 2:, :3]
    caption_band = slice(int(h * 0.78), h)  # below the drawing: text in both cells
    assert (left[caption_band] < 0.5).any() and (right[caption_band] < 0.5).any()
    assert (left[: int(h * 0.7)] < 0.9).any() and not (right[: int(h * 0.7)] < 0.9).any()  # only cell 0 drawn


def test_novelty_reference_build_is_announced_once(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(metrics, "NOTICE_MIN_ITEMS", 2)  # the real threshold is a thousand molecules
    cache = tmp_path / "train_smiles.txt"
    metrics.training_smiles(ZS[:3], PS[:3], cache, workers=1, progress=False)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: building the novelty reference (SMILES of 3 ")
    metrics.training_smiles(ZS[:3], PS[:3], cache, workers=1, progress=False)  # cached: no notice
    assert "note:" not in capsys.readouterr().err
