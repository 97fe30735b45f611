"""Crystal conditions for the core's token conditions: a composition (structure prediction) or a chemical
system (a set of elements).

    unite-sci train --modality mp20 data.condition_on=[composition,chemsys]
    unite-sci sample --checkpoint C --condition composition=Li2Fe2O4 --num 20
    unite-sci sample --checkpoint C --condition chemsys=Li-Fe-O --num 100

``composition``: one token per atom, aligned with the atoms (token i is atom i's element and shares
register i's position), so the denoiser knows every atom's element and generates coordinates and lattice;
the decoded types are then set to the given ones (``apply``), as DiffCSP and FlowMM take the atom types as
given. ``chemsys``: the set of elements present, unordered; the model chooses counts and structure.
``num_atoms``: the cell's atom count as a scalar condition, ``(n - max_atoms / 2) / (max_atoms / 4)``: the
denoiser is told the count through adaLN instead of inferring it from how many registers it sees
(``--condition num_atoms=7``; not given, it is the drawn count, so sampling always states it).
Conditions not given at sampling are drawn together from a training crystal. The training crystals' atomic
numbers are kept in the adapter's state (``state_dict``: one byte per atom, about 0.1 MB for MP-20), so a
checkpoint samples with no data files at hand.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from unite_sci.conditions import SCALARS, ConditionSpec
from unite_sci.errors import UserError

NAMES = ("composition", "chemsys", "num_atoms")
TOKEN_NAMES = ("composition", "chemsys")


def parse_elements(text: str, what: str) -> list[int]:
    """'Li2Fe2O4' (composition: every atom) or 'Li-Fe-O' (chemsys: each element once) -> atomic numbers."""
    from pymatgen.core import Composition, Element

    text = str(text).strip()
    for symbol in re.findall(r"[A-Z][a-z]*", text):  # before pymatgen, which reads 'Xx' as a dummy 'Xx0+'
        if not Element.is_valid_symbol(symbol):
            raise UserError(f"{what} {text!r}: {symbol!r} is not a chemical element")
    try:
        if what == "chemsys":
            zs = sorted({Element(s.strip()).Z for s in text.replace(",", "-").split("-") if s.strip()})
            if not zs or zs[-1] > 100:
                raise ValueError("needs elements with Z <= 100")
            return zs
        comp = Composition(text)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{what} {text!r} is not a valid {'formula' if what == 'composition' else 'element list'} "
                        f"({e})") from None
    z = []
    for el, amount in comp.items():
        if not isinstance(el, Element) or not 1 <= el.Z <= 100:
            raise UserError(f"composition {text!r}: {el} is not a chemical element")
        if abs(amount - round(amount)) > 1e-6:
            raise UserError(f"composition {text!r} needs whole numbers of atoms per cell")
        z += [el.Z] * int(round(amount))
    return z


def pad_types(atoms: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Type ids (0..99) per crystal -> (B, N) long padded with -1, and the atom counts (B,)."""
    sizes = torch.tensor([len(a) for a in atoms], dtype=torch.long)
    n = int(sizes.max())
    return torch.tensor(np.stack([np.pad(np.asarray(a), (0, n - len(a)), constant_values=-1) for a in atoms])), sizes


def element_set(types: Tensor) -> Tensor:
    """Per-atom type ids (B, N), -1 or padding >= 100 excluded -> the distinct ids (B, M) padded with -1."""
    rows = [sorted({int(t) for t in r.tolist() if 0 <= t < 100}) for r in types]
    m = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [-1] * (m - len(r)) for r in rows], dtype=torch.long)


class CrystalConditions:
    """What a crystal adapter conditions on, from ``data.condition_on``."""

    def __init__(self, names: list[str], max_atoms: int):
        bad = [n for n in names if n not in NAMES]
        if bad:
            raise UserError(f"unknown crystal condition(s) {bad}; valid: {', '.join(NAMES)}")
        self.names, self.max_atoms = list(names), max_atoms
        self.pool: list[np.ndarray] | None = None  # training crystals' atomic numbers, each (n,)

    def fit(self, train_z: list[np.ndarray]) -> None:
        """Keep the training crystals' atomic numbers (each (n,), 1..100): the pool unconditioned draws use."""
        self.pool = [np.asarray(z, dtype=np.int64) for z in train_z]

    def state_dict(self) -> dict[str, Tensor]:
        """The pool as flat uint8 atomic numbers (sum n,) and atoms per crystal (M,); empty before ``fit``."""
        if self.pool is None:
            return {}
        return {"condition_pool_z": torch.from_numpy(np.concatenate(self.pool).astype(np.uint8)),
                "condition_pool_sizes": torch.tensor([len(z) for z in self.pool], dtype=torch.long)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; a checkpoint without a pool (older ones) leaves it to the data."""
        if "condition_pool_z" in state:
            flat = state["condition_pool_z"].long().numpy()
            ends = np.cumsum(state["condition_pool_sizes"].numpy())
            self.pool = [flat[e - n:e] for e, n in zip(ends, state["condition_pool_sizes"].numpy())]

    def specs(self) -> list[ConditionSpec]:
        return [ConditionSpec(n, "tokens", aligned=(n == "composition")) if n in TOKEN_NAMES
                else ConditionSpec(n, "scalar") for n in self.names]

    @property
    def token_names(self) -> list[str]:
        return [n for n in self.names if n in TOKEN_NAMES]

    def count_value(self, sizes: Tensor) -> Tensor:
        """Atom counts (B,) -> the normalised ``num_atoms`` scalar column (B, 1)."""
        half = self.max_atoms / 2
        return ((sizes.float() - half) / (half / 2)).unsqueeze(1)

    def from_types(self, types: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Batch conditions from per-atom type ids (B, N) (0..99) and the atom mask."""
        ids = torch.where(mask, types, torch.full_like(types, -1))
        out = {}
        if "composition" in self.names:
            out["composition"] = ids
        if "chemsys" in self.names:
            out["chemsys"] = element_set(ids)
        if "num_atoms" in self.names:
            out[SCALARS] = self.count_value(mask.sum(1))
        return out

    def draw(self, num: int, gen: torch.Generator, given: dict[str, Any], train_z: Callable[[], list[np.ndarray]]
             ) -> tuple[dict[str, Tensor], Tensor]:
        """Conditions for ``num`` samples: given ones repeated, the rest from random training crystals
        (the fitted pool; else ``train_z()``, their atomic numbers loaded from the data, only when needed)."""
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise UserError(f"unknown condition(s) {unknown}: this checkpoint takes {', '.join(self.names)}")
        if "composition" in given and "chemsys" in given:
            raise UserError("give a composition or a chemical system, not both")
        n_given = self._count(given.get("num_atoms"))
        if "composition" in given:
            z = parse_elements(given["composition"], "composition")
            if not 0 < len(z) <= self.max_atoms:
                raise UserError(f"composition {given['composition']!r} has {len(z)} atoms; this model makes "
                                f"1 to {self.max_atoms} per cell")
            if n_given is not None and n_given != len(z):
                raise UserError(f"num_atoms={n_given} but composition {given['composition']!r} has {len(z)} atoms")
            atoms = [np.asarray(z) - 1] * num
        else:
            pool = self.pool if self.pool is not None else train_z()
            if n_given is not None:  # other conditions drawn from training crystals of that size
                pool = [z for z in pool if len(z) == n_given]
                if not pool:
                    raise UserError(f"num_atoms={n_given}: no training crystal has that many atoms")
            atoms = [np.asarray(pool[i]) - 1 for i in torch.randint(len(pool), (num,), generator=gen).tolist()]
        types, sizes = pad_types(atoms)
        mask = types >= 0
        out = self.from_types(types, mask)
        if "chemsys" in given:
            elems = torch.tensor(parse_elements(given["chemsys"], "chemsys")) - 1
            out["chemsys"] = elems.expand(num, -1).clone()
            if "composition" in self.names:  # the atoms' elements are the model's to choose
                out["composition"] = torch.full_like(out["composition"], -1)
        return out, sizes

    def _count(self, value: Any) -> int | None:
        """A user's ``num_atoms`` as an int in 1..max_atoms, or None when not given."""
        if value is None:
            return None
        try:
            n = float(value)
        except (TypeError, ValueError):
            raise UserError(f"num_atoms {value!r} is not a number") from None
        if n != int(n) or not 1 <= n <= self.max_atoms:
            raise UserError(f"num_atoms {value!r}: this model makes 1 to {self.max_atoms} atoms per cell")
        return int(n)

    @staticmethod
    def apply(out: dict[str, Tensor], conds: dict[str, Tensor]) -> dict[str, Tensor]:
        """A given composition fixes the decoded types: atom i takes its token's element."""
        comp = conds.get("composition")
        if comp is None or not (comp >= 0).any():
            return out
        logits = out["type_logits"]
        n = logits.shape[1]
        comp = comp[:, :n].to(logits.device)
        fixed = torch.nn.functional.one_hot(comp.clamp_min(0), logits.shape[-1]).to(logits.dtype) * 1e4
        return dict(out, type_logits=torch.where((comp >= 0).unsqueeze(-1), fixed, logits))
