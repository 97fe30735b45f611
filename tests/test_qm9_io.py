"""Molecule files: round trips through extxyz and npz, SDF reading, and every malformed fixture."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from unite_sci.errors import DataError
from unite_sci_modalities.qm9.data import load_qm9
from unite_sci_modalities.molecules.io import (
    read_extxyz,
    read_molecules,
    read_npz,
    read_sdf,
    write_extxyz,
    write_npz,
)

FIXTURES = Path(__file__).parent / "data" / "qm9"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """12 real QM9 molecules (3 to 19 atoms) from the small CSV fixture."""
    mols = load_qm9(data_dir=FIXTURES / "csv_small", cache_dir=tmp_path_factory.mktemp("cache"))
    return mols.z, mols.pos


def _assert_same(a: tuple[list, list], b: tuple[list, list], atol: float) -> None:
    assert len(a[0]) == len(b[0])
    for za, pa, zb, pb in zip(*a, *b):
        assert np.array_equal(za, zb)
        np.testing.assert_allclose(pa, pb, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------- round trips


def test_extxyz_round_trip(real: tuple, tmp_path: Path) -> None:
    info = [{"sample": i, "name": f"mol {i}", "score": 0.5 * i} for i in range(len(real[0]))]
    path = tmp_path / "out" / "samples.extxyz"  # parent folder is created
    write_extxyz(path, *real, info=info)
    z, pos, info_back = read_extxyz(path)
    _assert_same((z, pos), real, atol=1e-7)  # ase writes 8 decimals (Angstrom)
    assert z[0].dtype == np.int64 and pos[0].dtype == np.float64
    assert [d["sample"] for d in info_back] == list(range(len(z)))
    assert info_back[3]["name"] == "mol 3" and info_back[3]["score"] == pytest.approx(1.5)
    _assert_same(read_molecules(path), real, atol=1e-7)
    assert os.listdir(path.parent) == ["samples.extxyz"]  # no temporary file left behind


def test_xyz_suffix_without_info(real: tuple, tmp_path: Path) -> None:
    path = tmp_path / "samples.XYZ"  # suffix matched case-insensitively
    write_extxyz(path, *real)
    _assert_same(read_molecules(path), real, atol=1e-7)


def test_plain_xyz() -> None:
    z, pos = read_molecules(FIXTURES / "water.xyz")
    assert [a.tolist() for a in z] == [[8, 1, 1]]
    np.testing.assert_allclose(pos[0][1], [0.0, 0.757, -0.467])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npz_round_trip(real: tuple, tmp_path: Path, dtype: type) -> None:
    pos = [p.astype(dtype) for p in real[1]]
    write_npz(tmp_path / "samples.npz", real[0], pos)
    with np.load(tmp_path / "samples.npz") as f:
        assert f["z"].shape == (sum(map(len, real[0])),) and f["pos"].shape == (len(f["z"]), 3)
        assert f["n_atoms"].tolist() == [len(z) for z in real[0]]
    back = read_npz(tmp_path / "samples.npz")
    _assert_same(back, (real[0], pos), atol=0)
    _assert_same(read_molecules(tmp_path / "samples.npz"), back, atol=0)


def test_read_sdf() -> None:
    z, pos = read_sdf(FIXTURES / "two.sdf")
    assert [a.tolist() for a in z] == [[6, 8, 1, 1, 1, 1], [6, 7, 1]]  # methanol and HCN, explicit H
    assert pos[0].shape == (6, 3) and pos[0].dtype == np.float64
    np.testing.assert_allclose(pos[0][1], [0.9596, -0.3767, -0.2602])
    assert np.linalg.norm(pos[0][1] - pos[0][0]) == pytest.approx(1.42, abs=0.05)  # C-O, Angstrom
    _assert_same(read_molecules(FIXTURES / "two.sdf"), (z, pos), atol=0)


def test_writers_reject_mismatched_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 atomic-number arrays but 1"):
        write_npz(tmp_path / "x.npz", [np.ones(2), np.ones(1)], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="molecule 0"):
        write_extxyz(tmp_path / "x.xyz", [np.ones(2, int)], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="info"):
        write_extxyz(tmp_path / "x.xyz", [np.ones(2, int)], [np.zeros((2, 3))], info=[{}, {}])


# ---------------------------------------------------------------------------------------------- bad files

BAD_FIXTURES = {
    "empty.xyz": "empty file",
    "truncated.xyz": "claims 5 atoms but only 3 lines follow",
    "garbage.xyz": "not a valid XYZ file",
    "unknown_element.xyz": "unknown element symbol 'Xx'",
    "dummy_atom.xyz": "not a known element \\(Z=0\\)",
    "nan_coords.xyz": "non-finite coordinates",
    "zero_atoms.xyz": "frame 1 has no atoms",
    "few_columns.xyz": "not a valid XYZ file",
    "bad_number.xyz": "not a valid XYZ file",
    "count_too_small.xyz": "not a valid XYZ file",
    "latin1.xyz": "not UTF-8",
    "utf16.xyz": "not UTF-8",
    "empty.sdf": "empty file",
    "garbage.sdf": "no SDF records",
    "truncated.sdf": "record 1 is not a valid molfile",
    "unknown_element.sdf": "record 1 is not a valid molfile",
    "star_atom.sdf": "not a known element \\(Z=0\\)",
    "nan_coords.sdf": "record 1 is not a valid molfile",
    "flat_2d.sdf": "2D coordinates",
    "bad_counts.sdf": "record 1 is not a valid molfile",
    "latin1.sdf": "not UTF-8",
    "not_npz.npz": "not an .npz",
    "molecule.pdb": "unknown molecule file type '.pdb'",
    "missing.xyz": "file not found",
    "csv_small": "not a file",
}


@pytest.mark.parametrize("name", list(BAD_FIXTURES))
def test_malformed_fixture(name: str) -> None:
    path = FIXTURES / name
    with pytest.raises(DataError, match=BAD_FIXTURES[name]) as err:
        read_molecules(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


GOOD = {"z": np.array([6, 1, 1, 1, 1]), "pos": np.zeros((5, 3)), "n_atoms": np.array([5])}
BAD_NPZ = {
    "missing key": ({"z": GOOD["z"], "pos": GOOD["pos"]}, "missing array\\(s\\) n_atoms"),
    "count sum": ({**GOOD, "n_atoms": np.array([2, 2])}, "n_atoms sums to 4 but z has 5"),
    "nan": ({**GOOD, "pos": np.full((5, 3), np.nan)}, "non-finite coordinates"),
    "zero z": ({**GOOD, "z": np.array([6, 0, 1, 1, 1])}, "atom 2 is not a known element"),
    "float z": ({**GOOD, "z": GOOD["z"].astype(float)}, "z must be a 1-D integer array"),
    "pos shape": ({**GOOD, "pos": np.zeros((5, 2))}, "pos must be float of shape \\(5, 3\\)"),
    "negative count": ({**GOOD, "n_atoms": np.array([6, -1])}, "non-negative"),
    "empty molecule": ({**GOOD, "n_atoms": np.array([5, 0])}, "molecule 2 has no atoms"),
    "no molecules": ({"z": np.zeros(0, int), "pos": np.zeros((0, 3)), "n_atoms": np.zeros(0, int)}, "holds no"),
    "pickled objects": ({**GOOD, "z": np.array([None, 1], dtype=object)}, "not a valid .npz"),
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_malformed_npz(case: str, tmp_path: Path) -> None:
    arrays, message = BAD_NPZ[case]
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        read_molecules(path)
    assert str(path) in str(err.value)


def test_truncated_and_npy_npz(tmp_path: Path) -> None:
    good = _npz(tmp_path / "good.npz", **GOOD)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="cut.npz: not"):
        read_molecules(tmp_path / "cut.npz")
    np.save(tmp_path / "single.npy", GOOD["z"])
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(DataError, match="single.npz: not an .npz"):
        read_molecules(tmp_path / "single.npz")


def test_exported_files_are_readable_by_others(real: tuple, tmp_path: Path) -> None:
    # Samples are shared results: mode 0644 under the usual umask, not a private temporary file's 0600.
    from unite_sci.files import write_json
    from unite_sci_modalities.molecules import render

    old = os.umask(0o022)
    try:
        z, pos = real
        write_extxyz(tmp_path / "samples.extxyz", z, pos)
        render.write_sdf(tmp_path / "samples.sdf", z, pos)
        render.gallery_png(tmp_path / "gallery.png", z, pos)
        write_json({"unique_pct": float("nan")}, tmp_path / "metrics.json")
    finally:
        os.umask(old)
    for name in ("samples.extxyz", "samples.sdf", "gallery.png", "metrics.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_sdf_holds_the_bonds_the_gallery_draws(tmp_path: Path) -> None:
    # A carbon with five carbon neighbours at 1.5 A: perception bonds all five, RDKit refuses the
    # five-valent carbon. The gallery draws that graph, so the SDF record must carry it too (marked),
    # not fall back to atoms only.
    from rdkit import Chem

    from unite_sci_modalities.molecules import render

    z = np.array([6, 6, 6, 6, 6, 6])
    pos = 1.5 * np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]])
    render.write_sdf(tmp_path / "s.sdf", [z], [pos])
    (mol,) = list(Chem.SDMolSupplier(str(tmp_path / "s.sdf"), removeHs=False, sanitize=False))
    drawn = render._broken(z, pos)
    assert mol.GetProp("bonds") == "perceived, unsanitised"
    assert mol.GetNumBonds() > 0 and drawn.GetNumBonds() == sum(
        1 for b in mol.GetBonds() if b.GetBeginAtom().GetAtomicNum() > 1 and b.GetEndAtom().GetAtomicNum() > 1)


def test_gallery_captions_break_between_words() -> None:
    from unite_sci_modalities.molecules.render import _caption

    text = "invalid: RDKit sanitisation failed: explicit valence for atom # 3 C, 5, is greater than permitted"
    words = set(text.split())
    for line in _caption(text).splitlines():
        assert all(w in words or w == "..." for w in line.split()), line
    assert _caption("C" * 60).replace("\n", "") == "C" * 60  # a long SMILES is wrapped, not cut
