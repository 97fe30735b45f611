"""The verdicts of the peers' QM9 generation protocols on one molecule of any data set: ADiT's, EDM's and an
order-invariant variant.

A molecule is ``(z, pos)``: atomic numbers (n,) and coordinates (n, 3) in Angstrom, explicit hydrogens,
atoms in the order the model emitted them. :mod:`.metrics` runs :func:`evaluate_molecule` over many samples.

* ``adit`` follows ADiT's ``MoleculeGenerationEvaluator`` (``src/eval/molecule_generation.py``) step by
  step. pymatgen's ``Molecule`` (no proximity check) hands the atoms to OpenBabel in the given order
  (``BabelMolAdaptor``: add atoms, ``ConnectTheDots``, ``PerceiveBondOrders``, singlet, neutral, ``Center``;
  here :func:`.bonds.openbabel_mol`, whose PDB text equals pymatgen's, byte for byte). RDKit reads the PDB
  text back (``MolFromPDBFile`` there, ``MolFromPDBBlock`` here: the same parser) with ``removeHs=True``,
  the evaluator's default; the whole molecule's SMILES is written; the fragments are split off; the first
  of the largest (RDKit lists fragments by their lowest atom index, so ties go to the fragment holding the
  earliest atom in the given order) gives the isomeric SMILES. Valid when none of that raises.
  Not reproduced: the picture ADiT draws for its wandb table inside the same ``try`` block (drawing a
  sanitised molecule does not fail).
  ``valid_with_h`` is the same evaluator with ``removeHs=False``, which is what ADiT's shipped configuration
  passes (``configs/diffusion_module/ldm.yaml``: ``sampling.removeHs: false``, read by
  ``src/models/ldm_module.py``); it is stricter, as sanitising before the hydrogens go rejects e.g. a
  carbon with five neighbours.
* ``edm`` follows EDM's ``check_stability`` (``qm9/analyze.py``) and ``BasicMolecularMetrics.compute_validity``
  (``qm9/rdkit_functions.py``): bond orders from the distance tables (:func:`.bonds.edm_bond_orders`) for
  every pair, however close (two carbons 0.05 A apart get a triple bond, as in EDM); atom stability = the
  summed orders are an allowed valence; molecule stability = every atom stable; valid when the graph with
  explicit hydrogens sanitises. EDM's validity does not depend on the atom order or on which fragment is
  largest (that choice only feeds EDM's uniqueness, not computed here).
* ``canonical`` is not a peer's protocol and sits beside them: ADiT's route with the atoms handed to
  OpenBabel in a geometry-defined order (:func:`.bonds.canonical_order`) and ties between largest fragments
  broken by the smallest SMILES, so its verdict does not depend on the emitted order. OpenBabel's
  bond-order perception does: on the 13,083 QM9 test molecules (EDM split) the two orders give different
  SMILES for 119, and with 0.08 A of noise the validity verdict itself can flip.

Neither peer rejects anything before its protocol runs, so neither does this module, with one exception:
inputs that the peers never meet and the toolkits cannot take (no atoms, a non-finite coordinate, an
atomic number outside 1..118, mismatched shapes, coordinates beyond the PDB format's columns; more than
``MAX_ATOMS`` atoms, a memory guard) are invalid and unstable under every protocol, with their reason (EDM's code would
even call an empty molecule stable: 0 of 0 atoms). Atoms closer than ``MIN_DISTANCE`` are judged as the
peers judge them and only flagged (``too_close``): three atoms on one point are ADiT-valid, for instance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem

from .bonds import canonical_order, edm_atom_stable, edm_bond_orders, openbabel_mol, pdb_block

__all__ = [
    "MIN_DISTANCE",
    "MAX_ATOMS",
    "GenerationRecord",
    "check_input",
    "closest_pair",
    "adit_verdict",
    "edm_verdict",
    "evaluate_molecule",
]

MIN_DISTANCE = 0.1  # Angstrom; closer pairs are "atoms on top of each other" (real QM9 minimum: 0.96 A)
MAX_ATOMS = 2000  # the pairwise (n, n) arrays stay below ~100 MB; QM9 has at most 29 atoms
PDB_LIMIT = 999.0  # Angstrom; PDB's %8.3f columns overflow past -999.999 after OpenBabel centres the atoms
_BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


@dataclass
class GenerationRecord:
    """Per-sample result; one row of the per-sample CSV."""

    index: int
    n_atoms: int
    rejected: bool  # unusable input (see check_input): no protocol ran
    too_close: bool  # a pair closer than min_distance; judged as given all the same
    min_pair_distance: float  # Angstrom; inf with fewer than two atoms
    valid: bool  # ADiT validity, atoms in the given order
    valid_with_h: bool  # ADiT validity with removeHs=False (ADiT's shipped configuration)
    reason: str  # why it is invalid under ADiT ('' when valid)
    smiles: str  # ADiT SMILES of the largest fragment ('' when invalid)
    connected: bool  # ADiT-valid and one fragment
    stable: bool  # EDM molecule stability
    edm_valid: bool
    stable_atoms: int  # EDM-stable atoms
    unstable: str  # EDM-unstable atoms as "element index:valence", ';'-separated
    canonical_valid: bool  # ADiT's route in the canonical atom order
    canonical_smiles: str
    canonical_connected: bool


@dataclass(frozen=True)
class AditVerdict:
    valid: bool
    reason: str  # '' when valid
    smiles: str  # isomeric SMILES of the chosen largest fragment ('' when invalid)
    n_fragments: int
    valid_with_h: bool  # the PDB block also sanitises with its hydrogens kept


def check_input(z: object, pos: object) -> tuple[np.ndarray, np.ndarray, str]:
    """Turn one molecule into arrays and refuse what no toolkit can take (closeness is not checked).

    Returns ``(z int64 (n,), pos float64 (n, 3) Angstrom, reason)``; ``reason`` is '' when the molecule
    can be evaluated, else a short explanation (the arrays are then best-effort and must not be used).
    """
    try:
        # torch tensors (also on a GPU) without importing torch here
        z, pos = (x.detach().cpu().numpy() if hasattr(x, "detach") else x for x in (z, pos))
        z_arr = np.asarray(z, dtype=np.float64).reshape(-1)
        p_arr = np.asarray(pos, dtype=np.float64)
    except (TypeError, ValueError) as e:
        return np.zeros(0, np.int64), np.zeros((0, 3)), f"unreadable input ({e})"
    n = len(z_arr)
    if p_arr.size != 3 * n or (p_arr.ndim != 2 and n > 0):
        return np.zeros(0, np.int64), np.zeros((0, 3)), f"shape mismatch: z {z_arr.shape}, pos {p_arr.shape}"
    p_arr = p_arr.reshape(n, 3)
    bad_z = ~np.isfinite(z_arr) | (z_arr != np.round(z_arr)) | (z_arr < 1) | (z_arr > 118)
    z_int = np.where(bad_z, 0, z_arr).astype(np.int64)
    if n == 0:
        return z_int, p_arr, "no atoms"
    if bad_z.any():
        return z_int, p_arr, f"unknown atomic number {z_arr[bad_z][0]:g}"
    if not np.isfinite(p_arr).all():
        return z_int, p_arr, "non-finite coordinates"
    if n > MAX_ATOMS:
        return z_int, p_arr, f"{n} atoms, more than {MAX_ATOMS}"
    if np.abs(p_arr - p_arr.mean(0)).max() > PDB_LIMIT:
        return z_int, p_arr, f"coordinates spread beyond {PDB_LIMIT:g} A"
    return z_int, p_arr, ""


def closest_pair(pos: np.ndarray) -> float:
    """Smallest distance between two atoms of ``pos`` (n, 3), in Angstrom; inf when n < 2."""
    if len(pos) < 2:
        return float("inf")
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1) + np.diag(np.full(len(pos), np.inf))
    return float(np.sqrt(d2.min()))


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1].strip() if lines else type(e).__name__


def _why_invalid(block: str) -> str:
    """Repeat the step of ``MolFromPDBBlock`` that failed to learn why (RDKit only logs it)."""
    raw = Chem.MolFromPDBBlock(block, sanitize=False, removeHs=False)
    if raw is None:
        return "RDKit could not read the PDB block"
    try:
        Chem.RemoveHs(raw, sanitize=True)
        return "RDKit rejected the PDB block"
    except Exception as e:
        return f"RDKit sanitisation: {_first_line(e)}"


def adit_verdict(z: np.ndarray, pos: np.ndarray, canonical: bool = False) -> AditVerdict:
    """ADiT's route on one checked molecule (see the module docstring), atoms in the given order.

    With ``canonical`` the atoms go to OpenBabel in :func:`.bonds.canonical_order` and ties between
    largest fragments go to the smallest SMILES: not ADiT's, but independent of the input order.
    """
    if canonical:
        k = canonical_order(z, pos)
        z, pos = z[k], pos[k]
    try:
        block = pdb_block(openbabel_mol(z, pos))
    except Exception as e:  # OpenBabel raising on odd input must not end a 10,000-sample evaluation
        return AditVerdict(False, f"OpenBabel failed: {_first_line(e)}", "", 0, False)
    mol = Chem.MolFromPDBBlock(block, removeHs=True)  # proximity bonding, sanitisation, hydrogens removed
    if mol is None:
        return AditVerdict(False, _why_invalid(block), "", 0, False)
    try:
        Chem.MolToSmiles(mol, isomericSmiles=True)  # ADiT writes the whole molecule's SMILES first
        frags = Chem.GetMolFrags(mol, asMols=True)  # sanitises each fragment
        sizes = [f.GetNumAtoms() for f in frags]
        if not frags:  # every atom was a removed hydrogen: ADiT then writes the whole (empty) molecule
            smiles = Chem.MolToSmiles(mol, isomericSmiles=True)
        elif canonical:
            largest = [f for f, size in zip(frags, sizes) if size == max(sizes)]
            smiles = min(Chem.MolToSmiles(f, isomericSmiles=True) for f in largest)
        else:  # the first fragment of the largest size, in RDKit's fragment order
            smiles = Chem.MolToSmiles(frags[sizes.index(max(sizes))], isomericSmiles=True)
    except Exception as e:
        return AditVerdict(False, f"RDKit SMILES failed: {_first_line(e)}", "", 0, False)
    with_h = Chem.MolFromPDBBlock(block, removeHs=False) is not None
    return AditVerdict(True, "", smiles, len(frags), with_h)


def edm_verdict(z: np.ndarray, pos: np.ndarray) -> tuple[bool, int, str, bool]:
    """EDM's route on one checked molecule: (molecule stable, number of stable atoms, unstable atoms, valid)."""
    orders = edm_bond_orders(z, pos)
    stable = edm_atom_stable(z, orders)
    valence = orders.sum(1)
    unstable = ";".join(
        f"{Chem.GetPeriodicTable().GetElementSymbol(int(z[i]))}{i}:{valence[i]}" for i in np.flatnonzero(~stable)
    )
    mol = Chem.RWMol()
    for zz in z.tolist():
        mol.AddAtom(Chem.Atom(int(zz)))
    for i, j in zip(*np.nonzero(np.triu(orders))):
        mol.AddBond(int(i), int(j), _BOND_TYPES[int(orders[i, j])])
    try:
        Chem.SanitizeMol(mol)  # EDM's mol2smiles: valid when sanitisation succeeds
        valid = True
    except Exception:
        valid = False
    return bool(stable.all()), int(stable.sum()), unstable, valid


def unjudged_record(index: int, n_atoms: int, reason: str, rejected: bool) -> GenerationRecord:
    """The record of a molecule no protocol judged: invalid and unstable on every count, with ``reason``.

    ``rejected``: refused as input (:func:`check_input`); otherwise a check failed or ran out of time.
    """
    return GenerationRecord(
        index=index, n_atoms=n_atoms, rejected=rejected, too_close=False, min_pair_distance=float("nan"),
        valid=False, valid_with_h=False, reason=reason, smiles="", connected=False, stable=False, edm_valid=False,
        stable_atoms=0, unstable="", canonical_valid=False, canonical_smiles="", canonical_connected=False,
    )  # fmt: skip


def evaluate_molecule(
    z: object, pos: object, index: int = 0, min_distance: float = MIN_DISTANCE
) -> GenerationRecord:
    """All generation verdicts of one molecule (never raises on bad input).

    ``min_distance`` (Angstrom) only sets the ``too_close`` flag; no verdict depends on it.
    """
    z_arr, p_arr, reason = check_input(z, pos)
    n = len(z_arr)
    if reason:
        return unjudged_record(index, n, reason, rejected=True)
    d_min = closest_pair(p_arr)
    adit = adit_verdict(z_arr, p_arr)
    stable, n_stable, unstable, edm_valid = edm_verdict(z_arr, p_arr)
    canon = adit_verdict(z_arr, p_arr, canonical=True)
    return GenerationRecord(
        index=index, n_atoms=n, rejected=False, too_close=d_min < min_distance, min_pair_distance=d_min,
        valid=adit.valid, valid_with_h=adit.valid_with_h, reason=adit.reason, smiles=adit.smiles,
        connected=adit.valid and adit.n_fragments == 1, stable=stable, edm_valid=edm_valid,
        stable_atoms=n_stable, unstable=unstable, canonical_valid=canon.valid, canonical_smiles=canon.smiles,
        canonical_connected=canon.valid and canon.n_fragments == 1,
    )  # fmt: skip
