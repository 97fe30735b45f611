"""Physics checks of molecules: PoseBusters verdicts and force-field relaxation on cases with known answers,
the relaxed folder's round trip through ``evaluate``, and the SDF a chemist downloads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from unite_sci.engine import evaluate_path
from unite_sci.engine import relax_path
from unite_sci.physics import RELAX_CSV, read_rows, write_rows
from unite_sci_modalities.molecules import physics, render
from unite_sci_modalities.qm9.data import load_qm9
from unite_sci_modalities.molecules.forcefield import RelaxSettings, relax_molecule

FIXTURES = Path(__file__).parent / "data" / "qm9"
CHEAP = ["data.eval_workers=1", "data.novelty=false", "data.geometry=false"]  # in this process, no training set


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real QM9 molecules of 15 to 21 atoms (H C N O) from the small CSV fixture, DFT geometries."""
    mols = load_qm9(data_dir=FIXTURES / "csv_small", cache_dir=tmp_path_factory.mktemp("cache"))
    return [(z, p) for z, p in zip(mols.z, mols.pos) if len(z) >= 15]


def _stretch(pos: np.ndarray, i: int, j: int, length: float) -> np.ndarray:
    """``pos`` with atom ``i`` moved along the bond j -> i to ``length`` Angstrom from atom ``j``."""
    out = pos.copy()
    v = pos[i] - pos[j]
    out[i] = pos[j] + v / np.linalg.norm(v) * length
    return out


def test_real_molecule_passes_posebusters(real: list) -> None:
    verdicts = physics.posebusters_verdicts(*real[0])
    assert set(verdicts) == set(physics.CHECKS.values())
    assert all(verdicts.values()), verdicts


def test_stretched_bond_fails_the_bond_length_check(real: list) -> None:
    z, pos = real[0]
    assert z[0] == 8 and np.linalg.norm(pos[0] - pos[1]) == pytest.approx(1.20, abs=0.01)  # a C=O, O terminal
    # PoseBusters' mol checks ignore hydrogens, so a heavy-atom bond is stretched: 1.8 A still bonds for
    # OpenBabel (covalent radii + 0.45 A = 1.87 A) and lies past RDKit's C=O bound widened by 25 %
    assert all(physics.posebusters_verdicts(z, _stretch(pos, 0, 1, 1.3)).values())
    verdicts = physics.posebusters_verdicts(z, _stretch(pos, 0, 1, 1.8))
    assert [check for check, ok in verdicts.items() if not ok] == ["bond_lengths"]


def test_relaxing_a_distorted_molecule_releases_strain(real: list) -> None:
    z, pos = real[1]
    noisy = pos + np.random.default_rng(0).normal(0, 0.1, pos.shape)
    settings = RelaxSettings("mmff94", max_steps=1000, fmax=0.1)
    res = relax_molecule(z, noisy, settings)
    assert res.error == "" and res.converged and res.max_force <= 0.1
    assert res.strain > 20.0  # 0.1 A of noise on every atom costs tens of kcal/mol in MMFF94
    assert 0.05 < res.rmsd < 0.5
    again = relax_molecule(z, res.pos, settings)  # a minimum relaxes nowhere
    assert abs(again.strain) < 0.05 and again.rmsd < 0.01


def test_a_molecule_that_cannot_be_typed_is_a_row_not_a_crash() -> None:
    z = np.array([6, 6, 6, 6, 6, 6])  # a five-bonded carbon: the perceived graph does not sanitise
    pos = 1.5 * np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=float)
    res = relax_molecule(z, pos, RelaxSettings())
    assert "sanitise" in res.error and not res.converged and np.isnan(res.strain)
    np.testing.assert_array_equal(res.pos, pos)


def _folder(real: list, path: Path) -> Path:
    from unite_sci.engine import load_config, make_adapter

    adapter = make_adapter(load_config("qm9", overrides=CHEAP))
    adapter.export(real, path)
    return path


def test_relaxed_folder_round_trips_through_evaluate(real: list, tmp_path: Path) -> None:
    src = _folder(real[:3], tmp_path / "samples")
    noisy = [(z, p + np.random.default_rng(1).normal(0, 0.3, p.shape)) for z, p in real[3:4]]
    src_noisy = _folder(noisy, tmp_path / "noisy")
    out = tmp_path / "relaxed"
    summary = relax_path(str(src), str(out), "qm9", CHEAP, progress=False)
    assert summary["tool"].startswith("MMFF94 (RDKit ") and summary["relaxed"] + summary["errors"] == 3
    rows = read_rows(out / RELAX_CSV)
    assert [int(r["index"]) for r in rows] == [0, 1, 2]
    # resumable: rows already there are kept (a marked row survives a second run), none is added
    rows[0]["steps"] = "12345"
    write_rows(out / RELAX_CSV, rows)
    relax_path(str(src), str(out), "qm9", CHEAP, progress=False)
    assert [r["steps"] for r in read_rows(out / RELAX_CSV)][0] == "12345"
    per_sample = tmp_path / "per_sample.csv"
    metrics = evaluate_path("qm9", str(out), str(per_sample), CHEAP + ["data.physics=true"])
    pb, ss = physics.posebusters_name(), "MMFF94 strain"
    assert metrics[f"{pb}/geometry"].startswith("relaxed") and metrics[f"{pb}/all"] == 100.0
    assert metrics[f"{ss}/relaxed"] == 100.0 and metrics[f"{ss}/median_kcal_mol"] > 0
    joined = read_rows(per_sample)
    assert len(joined) == 3 and "pb_bond_lengths" in joined[0] and "connected" in joined[0]
    # the relaxed molecules are what evaluate read: relaxing them again releases nothing
    strain = np.median([float(r["strain_kcal_mol"]) for r in joined])
    assert strain == pytest.approx(metrics[f"{ss}/median_kcal_mol"])
    # noised molecules (0.3 A) evaluated as given fail visibly
    bad = evaluate_path("qm9", str(src_noisy), None, CHEAP + ["data.physics=true"])
    assert bad[f"{pb}/all"] == 0.0 and bad[f"{pb}/geometry"] == "as given"


def test_sdf_records_carry_their_verdicts(real: list, tmp_path: Path) -> None:
    z_bad = np.array([6, 6, 6, 6, 6, 6])
    p_bad = 1.5 * np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=float)
    z, pos = real[0]
    render.write_sdf(tmp_path / "s.sdf", [z, z_bad], [pos, p_bad], [{"strain_kcal_mol": 1.5}, {"strain_kcal_mol": float("nan")}],
                     valid_path=tmp_path / "valid.sdf")
    good, bad = Chem.SDMolSupplier(str(tmp_path / "s.sdf"), removeHs=False, sanitize=False)
    assert good.GetProp("valid") == "true" and good.GetProp("connected") == "true"
    assert good.GetProp("strain_kcal_mol") == "1.5" and good.GetProp("smiles")
    assert bad.GetProp("valid") == "false" and bad.GetProp("smiles") == "" and bad.GetProp("strain_kcal_mol") == ""
    # the SMILES property is the molecule the record's own bonds make
    read = Chem.RemoveHs(Chem.Mol(good))
    Chem.SanitizeMol(read)
    assert Chem.CanonSmiles(Chem.MolToSmiles(read)) == Chem.CanonSmiles(good.GetProp("smiles"))
    valid = list(Chem.SDMolSupplier(str(tmp_path / "valid.sdf"), removeHs=False))  # RDKit's defaults: sanitised
    assert len(valid) == 1 and valid[0] is not None and valid[0].GetProp("_Name") == "0"


@pytest.mark.parametrize("modality", ["qm9", "molecules"])
def test_both_molecule_modalities_have_the_switch(modality: str) -> None:
    from unite_sci.engine import load_config, make_adapter
    from unite_sci.errors import ConfigError
    from unite_sci.physics import has_physics

    adapter = make_adapter(load_config(modality, overrides=["data.physics=true", "data.force_field=gfn2_xtb"]))
    assert has_physics(adapter) and adapter.cfg.physics and adapter.relax_settings().force_field == "gfn2_xtb"
    with pytest.raises(ConfigError, match="mmff94, gfn2_xtb"):
        load_config(modality, overrides=["data.force_field=uff"])


def test_gfn2_xtb_relaxes_a_distorted_molecule(real: list) -> None:
    pytest.importorskip("tblite.interface", reason="GFN2-xTB needs the optional tblite package")
    z, pos = real[0]
    res = relax_molecule(z, pos + np.random.default_rng(0).normal(0, 0.1, pos.shape), RelaxSettings("gfn2_xtb"))
    assert res.error == "" and res.converged and res.strain > 20.0
