"""One Generative Encoder for molecules and crystals: QM9 and MP-20 trained jointly (ADiT's all-atom idea,
single-stage).

    unite-sci train --modality qm9+mp20 data.qm9_share=0.5
    unite-sci sample --checkpoint C --condition dataset=mp20 --num 100 --out s   # s/mp20/: CIFs, npz ...
    unite-sci evaluate --modality mp20 --samples s/mp20

A composite of the two adapters, built on the core's generic parts only: each training item comes from
one data set (a share ``qm9_share`` of them from QM9), a batch mixes both, and every sample carries its data
set as a token condition (``dataset``, dropped for guidance like any condition). One latent space: one
register per atom, and one cell register that only crystals have (``register_mask``). Atom types are atomic
numbers for both, through one shared element embedding and one type head. Coordinates enter and leave
through the part that owns them: Cartesian Angstrom for molecules (QM9's loss), periodic fractional
coordinates and a lattice for crystals (MP-20's loss). Metrics, exports and reconstruction are the parts'
own, per data set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unite_sci.adapter import AdapterBase, Batch, register
from unite_sci.conditions import ConditionSpec
from unite_sci.errors import UserError
from unite_sci.model import RegisterLayout
from unite_sci.reduce import masked_mean
from unite_sci.schema import ranged

from .atoms import MAX_Z
from .crystals.adapter import CrystalAdapter, CrystalConfig, frac_to_sincos, sincos_to_frac
from .crystals import data as cdata
from .qm9.adapter import QM9Adapter, QM9Config

DATASETS = ("qm9", "mp20")  # label 0, 1
PAD = MAX_Z  # type id of padding (ids 0..99 are Z = 1..100)


@dataclass
class JointConfig:
    qm9: QM9Config = field(default_factory=QM9Config)
    mp20: CrystalConfig = field(default_factory=CrystalConfig)
    qm9_share: float = ranged(0.5, lo=0, hi=1)  # expected share of QM9 items in a training batch


class MixedTrain(torch.utils.data.Dataset):
    """Training items (label, item): ``share`` of the indices go to QM9 (cycled), the rest to MP-20."""

    def __init__(self, parts: list, share: float):
        self.parts = parts
        total = sum(len(p) for p in parts)
        self.n0 = int(round(share * total))
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int):
        if i < self.n0:
            return 0, self.parts[0][i % len(self.parts[0])]
        return 1, self.parts[1][(i - self.n0) % len(self.parts[1])]


class Tagged(torch.utils.data.Dataset):
    """Validation / test: every item of both parts, tagged with its label."""

    def __init__(self, parts: list):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i: int):
        n0 = len(self.parts[0])
        return (0, self.parts[0][i]) if i < n0 else (1, self.parts[1][i - n0])


class JointEmbedder(nn.Module):
    """Shared element embedding + each data set's coordinate embedding (a row uses its own)."""

    def __init__(self, width: int, coord_freqs: int, coord_scale: float):
        super().__init__()
        self.scale = coord_scale
        self.type_embed = nn.Embedding(PAD + 1, width)
        self.cart = nn.Linear(3, width)
        self.register_buffer("freqs", 2.0 ** torch.arange(coord_freqs), persistent=False)
        self.frac = nn.Linear(6 * coord_freqs, width)
        self.lattice = nn.Linear(6, width)

    def forward(self, data: dict[str, Tensor], mask: Tensor | None) -> Tensor:
        crystal = (data["dataset"] == 1).view(-1, 1, 1)
        mol = self.cart(data["pos"] / self.scale)
        cry = self.frac(frac_to_sincos(data["frac"].unsqueeze(-1) * self.freqs).flatten(2))
        cry = cry + self.lattice(data["lattice"]).unsqueeze(1)
        return self.type_embed(data["types"]) + torch.where(crystal, cry, mol)  # (B, N, d)


class JointHeads(nn.Module):
    """Shared type logits over Z; Cartesian and periodic coordinate heads; the lattice from the last register."""

    def __init__(self, width: int, coord_scale: float):
        super().__init__()
        self.scale = coord_scale
        self.types = nn.Linear(width, MAX_Z)
        self.cart = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3))
        self.sincos = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 6))
        self.lattice = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 6))

    def forward(self, h: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        atoms, cell = h[:, :-1], h[:, -1]
        b, n, _ = atoms.shape
        return {"type_logits": self.types(atoms), "pos": self.cart(atoms) * self.scale,
                "sincos": self.sincos(atoms).view(b, n, 3, 2), "lattice": self.lattice(cell)}


def _pad_to(x: Tensor, n: int, value: float = 0) -> Tensor:
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, n - x.shape[1]), value=value)


@register("qm9+mp20")
class JointAdapter(AdapterBase):
    config_class = JointConfig
    num_classes = 0

    def __init__(self, cfg: JointConfig):
        super().__init__(cfg)
        self.parts = [QM9Adapter(cfg.qm9), CrystalAdapter(cfg.mp20)]
        if cfg.qm9.registers != "per_atom":
            raise UserError("the joint model needs per-atom registers for QM9 (data.qm9.registers=per_atom)")
        self.qm9_z = torch.tensor(self.parts[0].elements)  # QM9 type index -> Z
        self.layout = RegisterLayout(True, max(cfg.qm9.max_atoms, self.parts[1].max_atoms), extra=1)

    # ------------------------------------------------------------------ data
    def build_splits(self):
        splits = [p.build_splits() for p in self.parts]
        return {"train": MixedTrain([s["train"] for s in splits], self.cfg.qm9_share),
                **{k: Tagged([s[k] for s in splits]) for k in ("val", "test")}}

    def item_sizes(self, dataset) -> np.ndarray:
        sizes = [np.asarray(p.item_sizes(d)) for p, d in zip(self.parts, dataset.parts)]
        if isinstance(dataset, MixedTrain):
            i = np.arange(len(dataset))
            return np.where(i < dataset.n0, sizes[0][i % len(sizes[0])],
                            sizes[1][np.maximum(i - dataset.n0, 0) % len(sizes[1])])
        return np.concatenate(sizes)

    def collate(self, items: list) -> Batch:
        groups = [[it for lab, it in items if lab == k] for k in (0, 1)]
        order = [i for k in (0, 1) for i, (lab, _) in enumerate(items) if lab == k]
        subs = [p.collate(g) if g else None for p, g in zip(self.parts, groups)]
        n = max(s.mask.shape[1] for s in subs if s is not None)
        types, pos, frac, lattice, mask, label = [], [], [], [], [], []
        for k, s in enumerate(subs):
            if s is None:
                continue
            b = len(s)
            if k == 0:
                t = torch.where(s.mask, self.qm9_z[s.data["types"].clamp_max(len(self.qm9_z) - 1)] - 1, PAD)
                pos.append(_pad_to(s.data["pos"], n)), frac.append(torch.zeros(b, n, 3)), lattice.append(torch.zeros(b, 6))
            else:
                t = s.data["types"]
                pos.append(torch.zeros(b, n, 3)), frac.append(_pad_to(s.data["frac"], n)), lattice.append(s.data["lattice"])
            types.append(_pad_to(t.unsqueeze(-1), n, PAD).squeeze(-1)), mask.append(_pad_to(s.mask.unsqueeze(-1), n).squeeze(-1))
            label.append(torch.full((b,), k))
        back = torch.argsort(torch.tensor(order))  # the items' own order
        data = {"types": torch.cat(types)[back], "pos": torch.cat(pos)[back], "frac": torch.cat(frac)[back],
                "lattice": torch.cat(lattice)[back], "dataset": torch.cat(label)[back]}
        m = torch.cat(mask)[back]
        return Batch(data, m, self.null_cond(len(items)), {"dataset": data["dataset"].view(-1, 1)})

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        from .atoms import random_rotations

        rot = random_rotations(len(batch), generator).to(batch.data["pos"].device)
        frac = cdata.random_translate(batch.data["frac"], batch.mask, generator)
        crystal = (batch.data["dataset"] == 1).view(-1, 1, 1)
        return batch.with_data(pos=torch.bmm(batch.data["pos"], rot), frac=torch.where(crystal, frac, batch.data["frac"]))

    # ------------------------------------------------------------------ network parts
    def build_embedder(self, width: int) -> nn.Module:
        return JointEmbedder(width, self.cfg.mp20.coord_freqs, self.cfg.qm9.coord_scale)

    def build_heads(self, width: int) -> nn.Module:
        return JointHeads(width, self.cfg.qm9.coord_scale)

    def condition_specs(self) -> list:
        return [ConditionSpec("dataset", "tokens", aligned=False)]

    def build_condition_embedders(self, width: int) -> dict[str, nn.Module]:
        return {"dataset": nn.Embedding(len(DATASETS), width)}

    def register_mask(self, conds: dict[str, Tensor]) -> Tensor | None:
        ds = conds.get("dataset")
        return None if ds is None else ds[:, :1] == 1  # the cell register: crystals only

    def reconstruction_loss(self, out: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        d, mask = batch.data, batch.mask
        crystal = d["dataset"] == 1
        ce = F.cross_entropy(out["type_logits"].float().transpose(1, 2), d["types"].clamp_max(MAX_Z - 1),
                             reduction="none")
        ce = masked_mean(ce, mask)  # (B,)
        cart = masked_mean(((out["pos"].float() - d["pos"]) ** 2).sum(-1), mask)
        per = masked_mean(((out["sincos"].float() - frac_to_sincos(d["frac"])) ** 2).sum((-1, -2)), mask)
        lat = ((out["lattice"].float() - d["lattice"]) ** 2).mean(-1)
        c = self.cfg
        mol_loss = c.qm9.type_weight * ce + c.qm9.coord_weight * cart
        cry_loss = c.mp20.type_weight * ce + c.mp20.coord_weight * per + c.mp20.lattice_weight * lat
        loss = torch.where(crystal, cry_loss, mol_loss).mean()
        parts = {"type_ce": ce.mean().detach(),
                 "qm9_coord_mse": (cart * ~crystal).sum().detach() / (~crystal).sum().clamp_min(1),
                 "mp20_coord_mse": (per * crystal).sum().detach() / crystal.sum().clamp_min(1),
                 "mp20_lattice_mse": (lat * crystal).sum().detach() / crystal.sum().clamp_min(1)}
        return loss, parts

    # ------------------------------------------------------------------ generation
    def draw_conditions(self, num: int, generator: torch.Generator, given: dict[str, Any]):
        unknown = sorted(set(given) - {"dataset"})
        if unknown:
            raise UserError(f"unknown condition(s) {unknown}: this checkpoint takes dataset (qm9 or mp20)")
        if "dataset" in given:
            if given["dataset"] not in DATASETS:
                raise UserError(f"dataset must be one of {', '.join(DATASETS)}, got {given['dataset']!r}")
            label = torch.full((num,), DATASETS.index(given["dataset"]))
        else:
            label = (torch.rand(num, generator=generator) >= self.cfg.qm9_share).long()
        sizes = torch.zeros(num, dtype=torch.long)
        for k, p in enumerate(self.parts):
            sizes[label == k] = p.sample_sizes(num, generator)[label == k]
        return {"dataset": label.view(-1, 1)}, sizes

    def to_domain(self, out: dict[str, Tensor], mask: Tensor | None) -> list:
        """Molecules as (z, pos) (types among QM9's elements), crystals as CrystalItems, in row order; a
        sample with the cell register is a crystal."""
        label = out["register_mask"][:, -1].long().cpu()
        logits = out["type_logits"].float().cpu()
        allowed = torch.full((MAX_Z,), float("-inf"))
        allowed[self.qm9_z - 1] = 0
        z_mol = (logits + allowed).argmax(-1) + 1
        pos = out["pos"].float().cpu().numpy()
        m = mask.cpu()
        mp = self.parts[1]
        lattice = out["lattice"].float().cpu() * mp.lattice_std + mp.lattice_mean
        crystals = cdata.unpad_batch(logits.argmax(-1) + 1, sincos_to_frac(out["sincos"].float().cpu()), lattice, m)
        return [crystals[i] if label[i] == 1 else (z_mol[i][m[i]].numpy(), pos[i][m[i].numpy()])
                for i in range(len(label))]

    def batch_to_domain(self, batch: Batch) -> list:
        out = {"type_logits": F.one_hot(batch.data["types"].clamp_max(MAX_Z - 1), MAX_Z).float(),
               "pos": batch.data["pos"], "sincos": frac_to_sincos(batch.data["frac"]).float(),
               "lattice": batch.data["lattice"],
               "register_mask": torch.cat([batch.mask, (batch.data["dataset"] == 1).view(-1, 1)], 1)}
        return self.to_domain(out, batch.mask)

    @staticmethod
    def split(objs: list) -> list[list]:
        return [[o for o in objs if not isinstance(o, cdata.CrystalItem)],
                [o for o in objs if isinstance(o, cdata.CrystalItem)]]

    # ------------------------------------------------------------------ metrics and files
    def evaluate(self, samples: list, per_sample_csv: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, p, objs in zip(DATASETS, self.parts, self.split(samples)):
            if objs:
                csv = None if per_sample_csv is None else str(Path(per_sample_csv).with_name(f"per_sample_{name}.csv"))
                out.update({f"{name}:{k}": v for k, v in p.evaluate(objs, csv).items()})
        return out

    def evaluate_reconstruction(self, inputs: list, recons: list) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, p, a, b in zip(DATASETS, self.parts, self.split(inputs), self.split(recons)):
            if a:
                out.update({f"{name}:{k}": v for k, v in p.evaluate_reconstruction(a, b).items()})
        return out

    def quick_metrics(self, samples: list) -> dict[str, float]:
        out = {}
        for name, p, objs in zip(DATASETS, self.parts, self.split(samples)):
            if objs:
                out.update({f"{name}:{k}": v for k, v in p.quick_metrics(objs).items()})
        return out

    def export(self, samples: list, out_dir: Path) -> list[Path]:
        files = []
        for name, p, objs in zip(DATASETS, self.parts, self.split(samples)):
            if objs:
                files += p.export(objs, Path(out_dir) / name)
        return files

    def load_samples(self, path: Path) -> list:
        path, found = Path(path), []
        for name, p in zip(DATASETS, self.parts):
            if (path / name).exists():
                found += p.load_samples(path / name)
        if not found:
            raise UserError(f"'{path}' holds neither qm9/ nor mp20/ samples (what `sample` writes for qm9+mp20)")
        return found

    def state_dict(self) -> dict[str, Any]:
        return {name: p.state_dict() for name, p in zip(DATASETS, self.parts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, p in zip(DATASETS, self.parts):
            if name in state:
                p.load_state_dict(state[name])
