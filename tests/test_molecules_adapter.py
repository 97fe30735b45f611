"""The molecules modality (issue #25 item 3): the user's own SDF / XYZ / SMILES files, with the element
table, sizes and split derived from the data and saved in the checkpoint, QM9's metrics and exports."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from unite_sci.cli import main
from unite_sci.config import build_config
from unite_sci.errors import DataError
from unite_sci.testing import TINY, AdapterConformance
from unite_sci_modalities.molecules.adapter import MoleculesAdapter, MoleculesConfig, random_split
from unite_sci_modalities.molecules.sources import conformers, load_molecules
from unite_sci_modalities.molecules import metrics as molecule_metrics
from unite_sci_modalities.molecules.io import write_extxyz

DATA = Path(__file__).parent / "data" / "molecules"
SDF, SMI = DATA / "example.sdf", DATA / "example.smi"
SMALL = [f"data.data_dir={SDF}", "data.eval_workers=1"]


class TestMoleculesConformance(AdapterConformance):
    modality = "molecules"
    data_overrides = SMALL
    perfect_reconstruction = {"reconstruction/match_rate": 100.0, "reconstruction/rmsd": 0.0}


def adapter(*over: str) -> MoleculesAdapter:
    return MoleculesAdapter(build_config("molecules", MoleculesConfig, [], TINY + SMALL + list(over)).data)


def sdf_reference() -> list[Chem.Mol]:
    """The example file as RDKit reads it: an independent reader of the same molecules."""
    return list(Chem.SDMolSupplier(str(SDF), removeHs=False))


def test_element_table_and_sizes_come_from_the_data(tmp_path):
    a = adapter()
    mols = sdf_reference()
    found = sorted({atom.GetAtomicNum() for m in mols for atom in m.GetAtoms()})
    assert a.elements == found and {16, 17, 35} <= set(a.elements)  # S, Cl, Br from the file
    assert a.layout.count == max(m.GetNumAtoms() for m in mols)
    assert [int(a.z_to_type[z]) for z in found] == list(range(len(found)))
    # another file, another table: water and methane hold H C O only
    water = (np.array([8, 1, 1]), np.array([[0, 0, 0.117], [0, 0.757, -0.467], [0, -0.757, -0.467]]))
    methane = (np.array([6, 1, 1, 1, 1]), np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                                      [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]))
    write_extxyz(tmp_path / "small.xyz", *zip(*([water, methane] * 5)))
    b = adapter(f"data.data_dir={tmp_path / 'small.xyz'}", f"data.cache_dir={tmp_path}")
    assert b.elements == [1, 6, 8] and b.layout.count == 5


def test_split_and_size_histogram_are_derived_seeded_and_saved():
    a = adapter()
    splits = a.build_splits()
    idx = {s: a.split_indices()[s] for s in ("train", "val", "test")}
    assert [len(idx[s]) for s in idx] == [40, 5, 5]  # 80 / 10 / 10 of 50
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(50))
    assert np.array_equal(idx["test"], np.random.RandomState(0).permutation(50)[45:])
    assert not np.array_equal(random_split(50, [0.8, 0.1, 0.1], 1)["test"], idx["test"])
    mols = sdf_reference()
    sizes = np.array([mols[i].GetNumAtoms() for i in idx["train"]])
    expected = np.bincount(sizes, minlength=a.layout.count + 1) / len(sizes)
    assert np.allclose(a.count_dist.numpy(), expected)
    assert [splits["train"].mols.n_atoms[k] for k in range(3)] == sizes[:3].tolist()
    # a checkpoint's adapter needs no data: table, sizes and split come from the state
    state = torch.load(_roundtrip(a.state_dict()), weights_only=True)
    other = MoleculesAdapter(MoleculesConfig())  # no data_dir
    other.load_state_dict(state)
    assert other.elements == a.elements and other.layout == a.layout
    assert torch.equal(other.count_dist, a.count_dist)
    assert np.array_equal(other.split_indices()["val"], idx["val"])
    drawn = other.sample_sizes(2000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) <= set(sizes.tolist())


def _roundtrip(state: dict) -> "object":
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_smiles_conformers_are_seeded_and_built_once(tmp_path, capsys):
    first, key = load_molecules(str(SMI), str(tmp_path / "a"), seed=0, limit=3, workers=1)
    note = capsys.readouterr().err
    assert note.startswith("note: building 3-D conformers for 3 SMILES") and note.count("\n") == 1
    again, key2 = load_molecules(str(SMI), str(tmp_path / "b"), seed=0, limit=3, workers=1)
    capsys.readouterr()
    assert key == key2 and len(first) == 3
    assert all(np.array_equal(p, q) for p, q in zip(first.pos, again.pos))
    cached, _ = load_molecules(str(SMI), str(tmp_path / "a"), seed=0, limit=3, workers=1)
    assert "note:" not in capsys.readouterr().err  # read from the cache, nothing built
    assert all(np.array_equal(p, q) for p, q in zip(first.pos, cached.pos))
    other, _ = load_molecules(str(SMI), str(tmp_path / "c"), seed=7, limit=3, workers=1)  # (RDKit: 1 acts as 0)
    assert any(not np.allclose(p, q, atol=1e-3) for p, q in zip(first.pos, other.pos))
    smiles = SMI.read_text().split()[1:4]
    for smi, z, pos in zip(smiles, first.z, first.pos):
        ref = Chem.AddHs(Chem.MolFromSmiles(smi))  # explicit hydrogens, RDKit's atom order
        assert z.tolist() == [atom.GetAtomicNum() for atom in ref.GetAtoms()]
        bonds = np.array([np.linalg.norm(pos[b.GetBeginAtomIdx()] - pos[b.GetEndAtomIdx()]) for b in ref.GetBonds()])
        assert bonds.min() > 0.9 and bonds.max() < 1.95  # Angstrom: relaxed bonds, C-H 1.09 ... C-S 1.8
    mass = np.array([Chem.GetPeriodicTable().GetAtomicWeight(int(z)) for z in first.z[0]])
    assert np.allclose(mass @ first.pos[0] / mass.sum(), 0, atol=1e-3)  # centre of mass at 0 (Angstrom)


def test_an_interrupted_conformer_build_resumes_from_its_saved_chunks(tmp_path):
    smiles = SMI.read_text().split()[1:3]
    chunks = tmp_path / "key.chunks"
    made = conformers(smiles, 0, True, 1, 30.0, chunks, "test")
    saved = sorted(chunks.glob("*.npz"))
    assert [p.name for p in saved] == ["000000000.npz"]
    with np.load(saved[0]) as f:  # mark the saved chunk: a resumed build must return it, not embed again
        np.savez(saved[0], **{**{k: f[k] for k in f.files}, "pos": f["pos"] + 100.0})
    again = conformers(smiles, 0, True, 1, 30.0, chunks, "test")
    assert all(np.array_equal(a[1], b[1]) and np.allclose(a[2] + 100.0, b[2]) for a, b in zip(made, again))


def test_five_training_steps_then_sample_and_evaluate_give_the_qm9_metrics(tmp_path, capsys):
    run = ["train", "--modality", "molecules", "--data", str(SDF), "--max-steps", "5", "--out", str(tmp_path / "run"),
           "train.batch_size=8", "train.sample_every=0", "train.threads=1", "data.eval_workers=1", *TINY]
    assert main(run) == 0
    ckpt = json.loads(capsys.readouterr().out)["checkpoint"]
    assert main(["sample", "--checkpoint", ckpt, "--num", "4", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    files = {p.name for p in (tmp_path / "s").iterdir()}
    assert {"samples.extxyz", "samples.sdf", "gallery.png"} <= files
    capsys.readouterr()
    assert main(["evaluate", "--modality", "molecules", "--samples", str(tmp_path / "s"), "--data", str(SDF),
                 "--out", str(tmp_path / "m.json"), "data.eval_workers=1"]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    water = [np.array([8, 1, 1])], [np.array([[0, 0, 0.117], [0, 0.757, -0.467], [0, -0.757, -0.467]])]
    qm9_keys = set(molecule_metrics.evaluate_generation(*water, set(), workers=1, progress=False))
    assert qm9_keys <= set(got) and got["num_samples"] == 4
    assert "geometry/bond_w1/C-S" in got  # the reference is this data set, sulfur included


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("error: ") == 1, err
    last = err.splitlines()[-1]  # a conformer build says what it starts on the line before
    assert last.startswith("error: "), err
    return last


@pytest.mark.parametrize("name, text, expect", [
    ("garbage.sdf", "this is not a molfile\n", "no SDF records"),
    ("notes.pdf", "%PDF-1.4\n", "unknown molecule file type"),
    ("latin1.smi", b"CC\xe9\n", "not UTF-8"),
    ("unknown.xyz", "2\n\nXx 0 0 0\nH 1 0 0\n", "unknown element symbol 'Xx'"),
    ("nothing.smi", "SMILES\nnot_a_smiles\n[Xx]\n", "2 of 2 SMILES gave no molecule (unparsable SMILES 2"),
])
def test_unreadable_files_and_unknown_elements_give_one_line(tmp_path, capsys, name, text, expect):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = _one_line_error(["train", "--modality", "molecules", "--data", str(path), "--max-steps", "1",
                           "--out", str(tmp_path / "run"), f"data.cache_dir={tmp_path}", "data.eval_workers=1"], capsys)
    assert expect in err and str(path) in err


def test_a_folder_reads_its_files_in_name_order_and_no_data_says_how_to_give_it(tmp_path, capsys):
    water = (np.array([8, 1, 1]), np.array([[0, 0, 0.117], [0, 0.757, -0.467], [0, -0.757, -0.467]]))
    hcl = (np.array([17, 1]), np.array([[0, 0, 0], [0, 0, 1.27]]))
    write_extxyz(tmp_path / "b.xyz", *zip(*[water] * 2))
    write_extxyz(tmp_path / "a.xyz", *zip(*[hcl] * 3))
    (tmp_path / "notes.md").write_text("not a molecule file: skipped")
    mols, _ = load_molecules(str(tmp_path), str(tmp_path / "cache"))
    assert [z.tolist() for z in mols.z] == [[17, 1]] * 3 + [[8, 1, 1]] * 2
    err = _one_line_error(["train", "--modality", "molecules", "--max-steps", "1", "--out", str(tmp_path / "r")],
                          capsys)
    assert "needs data: --data FILE_OR_FOLDER" in err


def test_an_element_outside_the_table_gives_one_line(tmp_path, capsys):
    err = _one_line_error(["train", "--modality", "molecules", "--data", str(SDF), "--max-steps", "1", "--out",
                           str(tmp_path / "run"), "data.elements=[1,6,7,8,9]"], capsys)
    assert "the data hold S, Cl, Br, not in data.elements [H, C, N, O, F]" in err
    a = adapter()  # a checkpoint's table meets a molecule with an element it never saw (encode, reconstruct)
    a.load_state_dict({**a.state_dict(), "elements": [1, 6, 7, 8, 9, 16, 17]})
    with pytest.raises(DataError, match=r"atomic numbers \[35\] are not among"):
        a.collate(a.items_from_domain([(np.array([35, 6]), np.array([[0, 0, 0], [1.9, 0, 0]]))]))
