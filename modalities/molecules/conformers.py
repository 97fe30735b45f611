"""3-D conformers from SMILES: RDKit ETKDG (v3) embedding, then MMFF94 relaxation, seeded.

One function, :func:`embed`, run by :func:`unite_sci.parallel.parallel_map` in spawned worker processes,
so this module imports neither torch nor anything that does (see ``unite_sci/parallel.py``).

Every molecule is embedded with the same ``randomSeed``: its conformer then depends on the SMILES and the
seed alone, never on which worker ran it or in what order, so a SMILES list gives the same coordinates on
every machine with the same RDKit. Coordinates are in Angstrom, hydrogens explicit (``Chem.AddHs``).
"""
from __future__ import annotations

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

# Outcome codes, stored in the partial cache as int8 (see ``sources.py``)
OK, UNPARSABLE, NO_EMBEDDING, NO_MMFF, FAILED = 0, 1, 2, 3, 4
OUTCOMES = {OK: "ok", UNPARSABLE: "unparsable SMILES", NO_EMBEDDING: "ETKDG found no 3-D embedding",
            NO_MMFF: "no MMFF parameters (ETKDG geometry kept)", FAILED: "failed or past the time limit"}
EMBED_TIMEOUT_S = 30  # RDKit's own limit per embedding: a C call that the worker's alarm cannot stop
MMFF_MAX_ITERS = 2000


def embed(smiles: str, seed: int, mmff: bool) -> tuple[int, np.ndarray, np.ndarray]:
    """One conformer of ``smiles`` with explicit hydrogens.

    Args:
        smiles: one SMILES string.
        seed: ETKDG's ``randomSeed`` (>= 0).
        mmff: relax the embedding with MMFF94 (when RDKit has parameters for every atom).

    Returns:
        ``(outcome, z, pos)``: an outcome code (:data:`OUTCOMES`; :data:`NO_MMFF` still yields atoms),
        atomic numbers int64 (n,) and coordinates float64 (n, 3) in Angstrom; empty arrays when the
        molecule could not be built.
    """
    none = (np.zeros(0, np.int64), np.zeros((0, 3)))
    with rdBase.BlockLogs():  # the outcome code says what went wrong; RDKit's own lines would flood stderr
        mol = Chem.MolFromSmiles(smiles)
        if mol is None or mol.GetNumAtoms() == 0:
            return (UNPARSABLE, *none)
        mol = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed)
        params.numThreads = 1  # parallelism comes from the worker processes
        params.timeout = EMBED_TIMEOUT_S
        if AllChem.EmbedMolecule(mol, params) != 0:
            return (NO_EMBEDDING, *none)
        outcome = OK
        if mmff:
            if AllChem.MMFFHasAllMoleculeParams(mol):
                AllChem.MMFFOptimizeMolecule(mol, maxIters=MMFF_MAX_ITERS)  # 1 = not converged: kept all the same
            else:
                outcome = NO_MMFF
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    return outcome, z, mol.GetConformer().GetPositions().astype(np.float64)


def embed_item(item: tuple[str, int, bool]) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`embed` of ``(smiles, seed, mmff)``: the one-argument form ``parallel_map`` calls."""
    return embed(*item)
