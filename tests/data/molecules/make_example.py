"""Make ``example.sdf`` and ``example.smi``: real drug-like molecules from MOSES (the ``molsets`` wheel).

    pip install --no-deps molsets==0.3.1
    python tests/data/molecules/make_example.py

``example.sdf``: the first 50 molecules of MOSES's test split (file order) that hold sulfur, chlorine or
bromine, with explicit hydrogens and one conformer each, made by the molecules modality's own route
(``conformers.embed``: RDKit ETKDG v3, seed 0, then MMFF94), bonds as RDKit reads the SMILES.
``example.smi``: the next 8 such SMILES, for the conformer tests. MOSES: Polykovskiy et al., Front.
Pharmacol. 11, 565644 (2020).
"""
from __future__ import annotations

import sys
from pathlib import Path

from rdkit import Chem
from rdkit.Geometry import Point3D

from unite_sci_modalities.molecules.conformers import OK, embed
from unite_sci_modalities.molecules.sources import read_smiles, resolve

HERE = Path(__file__).resolve().parent
NUM_SDF, NUM_SMI = 50, 8
WANTED = {16, 17, 35}  # S, Cl, Br


def main() -> int:
    picked = []
    for smi in read_smiles(resolve("moses:test")[0]):
        mol = Chem.MolFromSmiles(smi)
        if mol is not None and WANTED & {a.GetAtomicNum() for a in mol.GetAtoms()}:
            picked.append(smi)
        if len(picked) == NUM_SDF + NUM_SMI:
            break
    writer = Chem.SDWriter(str(HERE / "example.sdf"))
    for i, smi in enumerate(picked[:NUM_SDF]):
        outcome, z, pos = embed(smi, 0, True)
        assert outcome == OK, (smi, outcome)
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))  # the same atom order as embed's
        assert [a.GetAtomicNum() for a in mol.GetAtoms()] == z.tolist()
        conf = Chem.Conformer(mol.GetNumAtoms())
        conf.Set3D(True)
        for k, p in enumerate(pos):
            conf.SetAtomPosition(k, Point3D(*map(float, p)))
        mol.AddConformer(conf)
        mol.SetProp("_Name", f"moses_test_{i}")
        mol.SetProp("smiles", smi)
        writer.write(mol)
    writer.close()
    (HERE / "example.smi").write_text("SMILES\n" + "\n".join(picked[NUM_SDF:]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
