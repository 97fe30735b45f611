"""Export sampled molecules (any molecule data set): an SDF file with 3-D coordinates and a PNG grid of 2-D
depictions.

Molecules are ``(z, pos)``: atomic numbers (n,) and coordinates (n, 3) in Angstrom. Bonds come from the
same route as the ADiT validity metric (OpenBabel perception -> PDB block -> RDKit, see :mod:`.metrics`),
so what a picture shows is what the metric judged, and each SDF record carries its verdicts. Neither function raises on a broken molecule: it is
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
from .protocols import adit_verdict, edm_verdict

__all__ = ["molecule_3d", "perceived_3d", "sdf_verdicts", "write_sdf", "gallery_png"]


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
    mol = perceived_3d(z, pos, sanitize=True)
    if mol is None:
        z_arr, p_arr, _ = check_input(z, pos)  # check_input keeps the two shapes consistent
        return _atoms_only(z_arr, p_arr), False
    return mol, True


def perceived_3d(z: object, pos: object, sanitize: bool) -> Chem.Mol | None:
    """The bonds the ADiT validity verdict perceives (:func:`.protocols.adit_verdict`: OpenBabel with the
    atoms in the given order -> PDB block -> RDKit), hydrogens kept, atoms in the input order, full-precision
    coordinates. None when perception fails, or, with ``sanitize``, when RDKit refuses the result (e.g. a
    carbon with five bonds): with the hydrogens kept this is ADiT's ``valid_with_h`` verdict."""
    z_arr, p_arr, reason = check_input(z, pos)
    if reason:
        return None
    try:
        mol = Chem.MolFromPDBBlock(pdb_block(openbabel_mol(z_arr, p_arr)), sanitize=sanitize, removeHs=False)
    except Exception:
        mol = None
    if mol is None:
        return None
    if not sanitize:
        mol.UpdatePropertyCache(strict=False)  # valences for the writer, without judging them
    conf = mol.GetConformer()
    for i, (x, y, w) in enumerate(p_arr.tolist()):  # full precision, not the PDB block's 3 decimals
        conf.SetAtomPosition(i, Point3D(x, y, w))
    for atom in mol.GetAtoms():
        atom.SetPDBResidueInfo(None)  # residue names from the PDB round trip mean nothing here
    return mol


def sdf_verdicts(z: object, pos: object) -> dict[str, object]:
    """The verdicts an SDF record carries, by the protocols of :mod:`.metrics`: ``valid`` (ADiT, atoms in
    the given order), ``valid_with_h`` (the same with the hydrogens kept: RDKit reads the record as
    written), ``connected`` (ADiT-valid, one fragment), ``stable`` (EDM molecule stability) and
    ``smiles`` (ADiT's SMILES of the largest fragment, '' when invalid)."""
    z_arr, p_arr, reason = check_input(z, pos)
    if reason:
        return {"valid": False, "valid_with_h": False, "connected": False, "stable": False, "smiles": ""}
    adit = adit_verdict(z_arr, p_arr)
    stable = edm_verdict(z_arr, p_arr)[0]
    return {"valid": adit.valid, "valid_with_h": adit.valid_with_h, "connected": adit.valid and adit.n_fragments == 1,
            "stable": stable, "smiles": adit.smiles}


def _set_prop(mol: Chem.Mol, key: str, value: object) -> None:
    if isinstance(value, (bool, np.bool_)):
        mol.SetProp(key, "true" if value else "false")
    elif isinstance(value, float):
        mol.SetProp(key, "" if not np.isfinite(value) else f"{value:.6g}")
    else:
        mol.SetProp(key, str(value))


def write_sdf(path: str | os.PathLike, z_list: Sequence[object], pos_list: Sequence[object],
              properties: Sequence[dict] | None = None, valid_path: str | os.PathLike | None = None) -> int:
    """Write molecules to an SDF file (coordinates in Angstrom, explicit hydrogens); returns how many
    had perceived bonds that RDKit accepts.

    Each record's bonds are those the ADiT validity verdict perceived (:func:`perceived_3d`), its title is
    its index, and its properties are ``bonds`` ('perceived'; 'perceived, unsanitised': RDKit refuses them,
    e.g. a five-bonded carbon, but they are what the verdict judged; 'none': atoms only, perception itself
    failed), the verdicts of :func:`sdf_verdicts` and ``properties[i]`` (e.g. PoseBusters and strain).
    ``valid_path``: also write the records that are ``valid_with_h`` and ``connected`` there, the file a
    chemist can read with RDKit's defaults (sanitised) and get one molecule per record.
    """
    if len(z_list) != len(pos_list):
        raise ValueError(f"{len(z_list)} atom-type arrays but {len(pos_list)} coordinate arrays")
    if properties is not None and len(properties) != len(z_list):
        raise ValueError(f"{len(properties)} property dicts for {len(z_list)} molecules")
    n_perceived = 0
    text, valid_text = io.StringIO(), io.StringIO()
    with quiet_toolkits(), Chem.SDWriter(text) as writer, Chem.SDWriter(valid_text) as valid_writer:
        for w in (writer, valid_writer):
            w.SetKekulize(False)  # perceived aromatic rings that do not kekulise must still be written
        for i, (z, pos) in enumerate(zip(z_list, pos_list)):
            mol, perceived = molecule_3d(z, pos)
            n_perceived += perceived
            label = "perceived" if perceived else "none"
            raw = None if perceived else perceived_3d(z, pos, sanitize=False)
            if raw is not None:
                mol, label = raw, "perceived, unsanitised"
            mol.SetProp("_Name", str(i))
            mol.SetProp("bonds", label)
            verdicts = sdf_verdicts(z, pos)
            for key, value in {**verdicts, **(properties[i] if properties is not None else {})}.items():
                _set_prop(mol, key, value)
            writer.write(mol)
            if perceived and verdicts["valid_with_h"] and verdicts["connected"]:
                valid_writer.write(mol)
    atomic_write(path, lambda f: f.write(text.getvalue()), binary=False)  # mode from the umask (0644)
    if valid_path is not None:
        atomic_write(valid_path, lambda f: f.write(valid_text.getvalue()), binary=False)
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
