"""Molecules as data, whatever their source: a set of (atomic numbers, coordinates in Angstrom), its flat
array layout, data set items and padded batches for torch.

Every molecule data source yields :class:`Molecules` (QM9's CSV files, ``qm9/data.py``; your own files,
:mod:`.sources`), centred at zero centre of mass, hydrogens explicit.

Usage::

    ds = MoleculeDataset(mols, random_rotation=True)  # items: Data(z=(n,) long, pos=(n, 3) float)
    z, pos, mask = pad_batch([ds[0], ds[1]], max_atoms=29)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch

from unite_sci.errors import ConfigError, DataError

from ..atoms import masses, principal_axes_frame, random_rotations


@dataclass
class Molecules:
    """A set of molecules (one split, or a whole data set), one array per molecule.

    Attributes:
        z: atomic numbers, int64 arrays of shape (n_i,).
        pos: coordinates in Angstrom, float32 arrays of shape (n_i, 3), centre of mass at 0.
        smiles: the data set's SMILES per molecule ('' when unknown).
        index: the data set's index per molecule (QM9's own index; for files, the entry's
            position), int64 array of shape (num,).
    """

    z: list[np.ndarray]
    pos: list[np.ndarray]
    smiles: list[str]
    index: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.z) == len(self.pos) == len(self.smiles) == len(self.index):
            raise ValueError(
                f"Molecules fields differ in length: z {len(self.z)}, pos {len(self.pos)}, "
                f"smiles {len(self.smiles)}, index {len(self.index)}"
            )

    def __len__(self) -> int:
        return len(self.z)

    @property
    def n_atoms(self) -> np.ndarray:
        """Atom count per molecule, int64 (num,)."""
        return np.fromiter((len(z) for z in self.z), dtype=np.int64, count=len(self.z))

    def subset(self, idx: Sequence[int] | np.ndarray) -> Molecules:
        """The molecules at positions ``idx`` (integer array or boolean mask), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return Molecules(
            z=[self.z[i] for i in idx],
            pos=[self.pos[i] for i in idx],
            smiles=[self.smiles[i] for i in idx],
            index=self.index[idx],
        )

    def principal_frame(self) -> Molecules:
        """The same molecules, each rotated into its principal-axes frame (``atoms.principal_axes_frame``)."""
        return Molecules(self.z, [principal_axes_frame(z, p) for z, p in zip(self.z, self.pos)], self.smiles,
                         self.index)


def from_flat(a: dict[str, np.ndarray]) -> Molecules:
    """Split flat arrays (``index``, ``n_atoms``, ``z``, ``pos``, ``smiles`` utf-8 bytes, ``smiles_len``: the
    layout of every molecule cache) into per-molecule views."""
    cut = np.cumsum(a["n_atoms"])[:-1]
    text = a["smiles"].tobytes()
    ends = np.cumsum(a["smiles_len"]).tolist()
    starts = [0] + ends[:-1]
    return Molecules(
        z=np.split(a["z"].astype(np.int64), cut),
        pos=np.split(a["pos"], cut),
        smiles=[text[s:e].decode("utf-8") for s, e in zip(starts, ends)],
        index=a["index"].astype(np.int64),
    )


def molecule_item(z: np.ndarray, pos: np.ndarray) -> Data:
    """One molecule from a file (atomic numbers (n,), Angstrom (n, 3)) as a data set item: centre of mass
    at 0, as every data source centres its molecules."""
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    if len(z) != len(pos) or not len(z):
        raise DataError(f"a molecule needs as many coordinates as atoms and at least one atom "
                        f"(got {len(z)} atoms, {len(pos)} positions)")
    m = masses(z)
    com = (m[:, None] * pos).sum(0) / m.sum()
    return Data(z=torch.from_numpy(z), pos=torch.from_numpy((pos - com).astype(np.float32)))


def atom_count_distribution(mols: Molecules, max_atoms: int) -> np.ndarray:
    """Empirical probabilities of the atom count, float64 (max_atoms + 1,) over 0..max_atoms."""
    counts = np.bincount(mols.n_atoms, minlength=max_atoms + 1).astype(np.float64)
    if len(counts) > max_atoms + 1:
        raise ConfigError(f"max_atoms={max_atoms} is below the largest molecule ({len(counts) - 1} atoms)")
    return counts / counts.sum()


class MoleculeDataset(torch.utils.data.Dataset):
    """Molecules as ``torch_geometric.data.Data(z=(n,) long, pos=(n, 3) float32 Angstrom)``.

    With ``random_rotation`` each item is rotated by a fresh uniformly random rotation about its centre of
    mass (the training augmentation); it draws from torch's global generator, which DataLoader seeds
    differently in every worker.
    """

    def __init__(self, mols: Molecules, random_rotation: bool = False, props: np.ndarray | None = None) -> None:
        self.mols = mols
        self.random_rotation = random_rotation
        self.props = props  # (n, P) float32 normalised condition values, or None: items then carry no ``y``

    def __len__(self) -> int:
        return len(self.mols)

    def __getitem__(self, i: int) -> Data:
        z = torch.tensor(self.mols.z[i], dtype=torch.long)  # copies: callers may edit items in place
        pos = torch.tensor(self.mols.pos[i], dtype=torch.float32)  # (n, 3)
        if self.random_rotation:
            pos = pos @ random_rotations(1)[0].T  # centre of mass is 0, so it stays 0
        if self.props is not None:
            return Data(z=z, pos=pos, y=torch.from_numpy(self.props[i]).view(1, -1))
        return Data(z=z, pos=pos)


def pad_batch(items: list[Data], max_atoms: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pad molecules into dense tensors.

    Returns z (B, N) long with 0 = padding, pos (B, N, 3) float in Angstrom (0 where padded) and mask (B, N)
    bool (True = real atom), where N = max_atoms if given, else the largest molecule in the batch.
    """
    if not items:
        raise ValueError("pad_batch needs at least one molecule")
    batch = Batch.from_data_list(items)
    largest = int(torch.bincount(batch.batch).max())
    if max_atoms is not None and largest > max_atoms:
        # to_dense_batch would silently drop the extra atoms.
        raise ConfigError(f"max_atoms={max_atoms} is below a molecule in the batch ({largest} atoms)")
    shape = {"max_num_nodes": max_atoms, "batch_size": len(items)}
    z, mask = to_dense_batch(batch.z, batch.batch, fill_value=0, **shape)  # (B, N), (B, N)
    pos, _ = to_dense_batch(batch.pos, batch.batch, fill_value=0.0, **shape)  # (B, N, 3)
    return z, pos, mask
