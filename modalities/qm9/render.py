"""Export sampled QM9 molecules: an SDF file with 3-D coordinates and a PNG grid of 2-D depictions.

Molecules are ``(z, pos)``: atomic numbers (n,) and coordinates (n, 3) in Angstrom. Bonds come from the
same route as the ADiT validity metric (OpenBabel perception -> PDB block -> RDKit, see :mod:`.metrics`),
so what a picture shows is what the metric judged. Neither function raises on a broken molecule: it is
written with its atoms only, or drawn as its perceived (unsanitised) heavy-atom graph labelled 'invalid'.
"""
from __future__ import annotations

import io
import os
import textwrap
from typing import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDepictor
from rdkit.Chem.Draw import rdMolDraw2D
from rdkit.Geometry import Point3D

from unite_sci.files import atomic_write

from .bonds import canonical_order, openbabel_mol, pdb_block, quiet_toolkits
from .metrics import check_input, evaluate_molecule

__all__ = ["molecule_3d", "write_sdf", "gallery_png"]


def _atoms_only(z: np.ndarray, pos: np.ndarray) -> Chem.Mol:
    """Atoms and a conformer, no bonds; non-finite coordinates are written as 0."""
    mol = Chem.RWMol()
    for zz in z.tolist():
        atom = Chem.Atom(int(zz) if 0 < zz <= 118 else 0)  # 0 = RDKit's dummy atom '*'
        atom.SetNoImplicit(True)  # do not invent hydrogens for a molecule that failed perception
        mol.AddAtom(atom)
    conf = Chem.Conformer(len(z))
    for i, (x, y, w) in enumerate(np.nan_to_num(pos, nan=0.0, posinf=0.0, neginf=0.0).tolist()):
        conf.SetAtomPosition(i, Point3D(x, y, w))
    mol.AddConformer(conf, assignId=True)
    mol.UpdatePropertyCache(strict=False)
    return mol.GetMol()


def molecule_3d(z: object, pos: object) -> tuple[Chem.Mol, bool]:
    """RDKit molecule with explicit hydrogens and 3-D coordinates in the input atom order.

    Returns ``(mol, perceived)``: bonds from the ADiT route when it sanitises with the hydrogens kept
    (``perceived`` True), else atoms only.
    """
    mol = _perceived_3d(z, pos, sanitize=True)
    if mol is None:
        z_arr, p_arr, _ = check_input(z, pos)  # check_input keeps the two shapes consistent
        return _atoms_only(z_arr, p_arr), False
    return mol, True


def _perceived_3d(z: object, pos: object, sanitize: bool) -> Chem.Mol | None:
    """Perceived bonds (the ADiT route) with hydrogens, in the input atom order; None when perception
    fails, or, with ``sanitize``, when RDKit refuses the result (e.g. a carbon with five bonds)."""
    z_arr, p_arr, reason = check_input(z, pos)
    if reason:
        return None
    k = canonical_order(z_arr, p_arr)
    try:
        mol = Chem.MolFromPDBBlock(pdb_block(openbabel_mol(z_arr[k], p_arr[k])), sanitize=sanitize,
                                   removeHs=False)
    except Exception:
        mol = None
    if mol is None:
        return None
    if not sanitize:
        mol.UpdatePropertyCache(strict=False)  # valences for the writer, without judging them
    mol = Chem.RenumberAtoms(mol, np.argsort(k).tolist())  # back to the caller's atom order
    conf = mol.GetConformer()
    for i, (x, y, w) in enumerate(p_arr.tolist()):  # full precision, not the PDB block's 3 decimals
        conf.SetAtomPosition(i, Point3D(x, y, w))
    for atom in mol.GetAtoms():
        atom.SetPDBResidueInfo(None)  # residue names from the PDB round trip mean nothing here
    return mol


def write_sdf(path: str | os.PathLike, z_list: Sequence[object], pos_list: Sequence[object]) -> int:
    """Write molecules to an SDF file (coordinates in Angstrom, explicit hydrogens); returns how many
    had perceived bonds that RDKit accepts. Each record's title is its index; the property ``bonds`` says
    'perceived', 'perceived, unsanitised' (the bonds the gallery draws for an invalid molecule: RDKit
    refuses them, e.g. a five-bonded carbon, but they are what the metric judged) or 'none' (atoms only:
    perception itself failed).
    """
    if len(z_list) != len(pos_list):
        raise ValueError(f"{len(z_list)} atom-type arrays but {len(pos_list)} coordinate arrays")
    n_perceived = 0
    text = io.StringIO()
    with quiet_toolkits(), Chem.SDWriter(text) as writer:
        writer.SetKekulize(False)  # perceived aromatic rings that do not kekulise must still be written
        for i, (z, pos) in enumerate(zip(z_list, pos_list)):
            mol, perceived = molecule_3d(z, pos)
            n_perceived += perceived
            label = "perceived" if perceived else "none"
            raw = None if perceived else _perceived_3d(z, pos, sanitize=False)
            if raw is not None:
                mol, label = raw, "perceived, unsanitised"
            mol.SetProp("_Name", str(i))
            mol.SetProp("bonds", label)
            writer.write(mol)
    atomic_write(path, lambda f: f.write(text.getvalue()), binary=False)  # mode from the umask (0644)
    return n_perceived


def _broken(z: object, pos: object) -> Chem.Mol:
    """Heavy-atom graph as perceived, unsanitised, for drawing an invalid molecule; '*' if even that fails."""
    z_arr, p_arr, reason = check_input(z, pos)
    try:
        if reason:
            raise ValueError(reason)
        k = canonical_order(z_arr, p_arr)
        mol = Chem.MolFromPDBBlock(pdb_block(openbabel_mol(z_arr[k], p_arr[k])), sanitize=False, removeHs=False)
        mol = Chem.RemoveHs(mol, sanitize=False)
        mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(mol)
        for atom in mol.GetAtoms():
            atom.SetNoImplicit(True)  # draw what is there, without invented hydrogens
        mol = rdMolDraw2D.PrepareMolForDrawing(mol, kekulize=False, addChiralHs=False)
        rdDepictor.Compute2DCoords(mol)
        return mol
    except Exception:
        return Chem.MolFromSmiles("*")


def _depiction(z: object, pos: object) -> tuple[Chem.Mol, str]:
    """(2-D drawable heavy-atom molecule, legend): ADiT-valid molecules show their SMILES."""
    record = evaluate_molecule(z, pos)
    mol = Chem.MolFromSmiles(record.smiles) if record.valid else None  # the fragment the metric judged
    if mol is None:
        return _broken(z, pos), _caption("invalid" + (f": {record.reason}" if record.reason else ""))
    rdDepictor.Compute2DCoords(mol)
    return mol, _caption(record.smiles + ("" if record.connected else " (fragments)"))


def _caption(text: str, width: int = 34, lines: int = 3) -> str:
    """``text`` on up to ``lines`` lines of ``width`` characters (what fits under a 250 px cell),
    broken between words; only a long SMILES (no spaces) is broken inside, and it loses nothing."""
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" ...")) or text


def _cell_image(mol: Chem.Mol, cell_px: int) -> tuple[np.ndarray | None, str]:
    """RGB(A) pixels (cell_px, cell_px, 3|4) of one depiction, or None and why it could not be drawn.

    A degenerate generated geometry can make RDKit's depiction fail, or succeed with nothing on the
    canvas (seen for two 16- and 19-atom samples): both come back as None with the reason, and one bad
    sample never loses the whole gallery."""
    import matplotlib.image as mpimg

    if mol.GetNumAtoms() == 0:
        return None, "no atoms to draw"
    try:
        drawer = rdMolDraw2D.MolDraw2DCairo(cell_px, cell_px)
        drawer.DrawMolecule(mol)
        drawer.FinishDrawing()
        image = mpimg.imread(io.BytesIO(drawer.GetDrawingText()), format="png")
    except (RuntimeError, ValueError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    if not (image[..., :3] < 0.9).any():
        return None, "RDKit drew nothing (degenerate 2-D layout)"
    return image, ""


def gallery_png(
    path: str | os.PathLike,
    z_list: Sequence[object],
    pos_list: Sequence[object],
    n: int = 16,
    per_row: int = 4,
    cell_px: int = 250,
    titles: Sequence[str] | None = None,
) -> list[str]:
    """Draw the first ``n`` molecules as a PNG grid of 2-D depictions. Every cell has a caption: its title
    (``titles[i]``, default ``#i``), its atom count, and the SMILES of its largest fragment ('(fragments)'
    when there are several) or 'invalid: why'; a cell that could not be drawn says so and why.
    Returns the captions, in cell order.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    count = min(n, len(z_list), len(pos_list))
    if count == 0:
        raise ValueError("gallery_png needs at least one molecule")
    cells = []
    with quiet_toolkits():
        for i in range(count):
            mol, legend = _depiction(z_list[i], pos_list[i])
            image, why = _cell_image(mol, cell_px)
            head = f"{titles[i] if titles is not None else f'#{i}'}: {len(np.asarray(z_list[i]))} atoms"
            cells.append((image, "\n".join([head, legend] + ([_caption(f"could not draw: {why}")] if why else []))))
    cols = min(per_row, count)
    rows = -(-count // cols)
    inch = cell_px / 100
    fig, axes = plt.subplots(rows, cols, figsize=(cols * inch, rows * inch * 1.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, cells):
        if image is not None:
            ax.imshow(image)
        ax.set_xlim(0, cell_px)
        ax.set_ylim(cell_px, 0)
        ax.set_aspect("equal")  # drawn or not, every cell's box (and caption) sits alike
        ax.text(0.5, -0.01, caption, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.3)
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"), binary=True)
    plt.close(fig)
    return [c for _, c in cells]
