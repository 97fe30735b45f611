"""The molecule modality's adapter machinery, one for every molecule data set: QM9 (``qm9/adapter.py``) and
your own files (:mod:`.adapter`) subclass :class:`MoleculeAdapterBase` and supply only their data.

Tokens: atom type embedding + coordinate embedding. Registers: one per atom (ADiT-style per-atom
latents, register i absorbs atom i) by default, or, where a data set offers it (QM9's
``data.registers=fixed``), a fixed number K of registers whose decoder slots predict "no atom" past the
molecule's size. Reconstruction loss: cross-entropy on types + MSE on coordinates in Angstrom.
Coordinates are in Angstrom everywhere outside the network; inside it they are divided by
``coord_scale``. Metrics (:mod:`.metrics`, :mod:`.geometry`), exports (:mod:`.io`, :mod:`.render`) and
physics checks (:mod:`.physics`) are the same for every data set.

A subclass sets ``elements`` (atomic numbers of the type table: type i is ``elements[i]``), ``layout``,
``z_to_type`` ((120,) long, -1 outside the table) and, for a fixed layout, ``fixed``; it implements
``build_splits`` (which also fills ``count_dist``) and the data hooks :meth:`~MoleculeAdapterBase.molecules`,
:meth:`~MoleculeAdapterBase.reference_cache` and :meth:`~MoleculeAdapterBase.reference_notes`. Its config
carries the fields read here (``random_rotation``, ``canonical_frame``, ``coord_scale``, the loss weights,
``eval_workers``, ``time_limit_s``, ``novelty``, ``geometry`` and the physics settings).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unite_sci.adapter import AdapterBase, Batch
from unite_sci.errors import DataError
from unite_sci.files import beside
from unite_sci.model import RegisterLayout
from unite_sci.reduce import masked_mean

from ..atoms import principal_axes_frame, random_rotations
from . import data as mdata
from . import io as mio
from .forcefield import RelaxSettings

if TYPE_CHECKING:  # the metrics modules load RDKit and OpenBabel: imported when first evaluating
    from .geometry import Geometry

# Thresholds of the strain shares, measured on real QM9 test molecules with MMFF94 (docs/results.md)
STRAIN_UNDER = 10.0  # kcal/mol
RMSD_UNDER = 0.5  # Angstrom
GEOMETRY_REFERENCE = 10_000  # training molecules (the first of the split) the geometry metrics compare with


class AtomEmbedder(nn.Module):
    """Atom tokens: type embedding + linear embedding of the coordinates."""

    def __init__(self, num_types: int, width: int, coord_scale: float):
        super().__init__()
        self.scale = coord_scale
        self.type_embed = nn.Embedding(num_types + 1, width)  # last index: padding
        self.coord_embed = nn.Linear(3, width)

    def forward(self, data: dict[str, Tensor], mask: Tensor | None) -> Tensor:
        return self.type_embed(data["types"]) + self.coord_embed(data["pos"] / self.scale)  # (B, N, d)


class AtomHeads(nn.Module):
    """Per-register atom type logits and coordinates (Angstrom)."""

    def __init__(self, width: int, num_classes: int, coord_scale: float):
        super().__init__()
        self.scale = coord_scale
        self.types = nn.Linear(width, num_classes)
        self.coords = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3))

    def forward(self, h: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        return {"type_logits": self.types(h), "pos": self.coords(h) * self.scale}  # (B, K, T), (B, K, 3)


def pair_distance_mse(pred: Tensor, pos: Tensor, mask: Tensor, cutoff: float) -> Tensor:
    """Mean squared error (Angstrom^2) of interatomic distances over the pairs (i != j) of real atoms
    that lie closer than ``cutoff`` in the target; per molecule, then over molecules.

    pred, pos: (B, N, 3) Angstrom; mask: (B, N) bool.
    """
    d_true = torch.cdist(pos, pos)  # (B, N, N)
    diff = pred.unsqueeze(2) - pred.unsqueeze(1)  # (B, N, N, 3)
    d_pred = (diff.pow(2).sum(-1) + 1e-12).sqrt()  # eps: the gradient of sqrt at 0 (the diagonal) is inf
    eye = torch.eye(pos.shape[1], dtype=torch.bool, device=pos.device)
    pairs = mask.unsqueeze(2) & mask.unsqueeze(1) & ~eye & (d_true < cutoff)  # (B, N, N)
    return masked_mean((d_pred - d_true).pow(2), pairs).mean()


class MoleculeAdapterBase(AdapterBase):
    """Molecules as ``(atomic numbers (n,), coordinates (n, 3) in Angstrom)``, explicit hydrogens; see the
    module docstring for what a data set's subclass supplies."""

    num_classes = 0
    elements: list[int]
    layout: RegisterLayout
    z_to_type: Tensor

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.fixed = False  # per-atom registers; True: K slots, the last type class "no atom"
        self.count_dist = torch.zeros(1, dtype=torch.float64)  # atom-count probabilities of the training split
        self._splits: dict[str, Any] | None = None
        self._train_smiles: set[str] | None = None
        self._geometry_ref: Geometry | None = None  # the reference training molecules, once measured

    # ------------------------------------------------------------------ data (the subclass's)
    def molecules(self, split: str, frame: bool = True) -> mdata.Molecules:
        """A split as configured; ``frame=False`` keeps the data set's own orientation (novelty and
        geometry references are pose-free, so they need not depend on the frame setting)."""
        raise NotImplementedError

    def reference_cache(self, stem: str, suffix: str) -> Path:
        """Where a reference made from the training split (novelty SMILES, geometry) is cached."""
        raise NotImplementedError

    def reference_notes(self) -> dict[str, str]:
        """What ``evaluate`` writes beside its numbers about the reference data: ``split`` (the split and
        novelty's reference), ``train`` (the training molecules, as in "the first 10,000 ...")
        and ``label`` (the reference histogram's legend)."""
        raise NotImplementedError

    def item_sizes(self, dataset) -> np.ndarray:
        return dataset.mols.n_atoms

    def collate(self, items: list) -> Batch:
        z, pos, mask = mdata.pad_batch(items)
        types = self.z_to_type[z]
        if (types[mask] < 0).any():
            bad = sorted(set(z[mask][types[mask] < 0].tolist()))
            raise DataError(f"atomic numbers {bad} are not among data.elements {self.elements}")
        types = torch.where(mask, types, torch.full_like(types, len(self.elements)))  # padding index
        return Batch({"types": types, "pos": pos * mask.unsqueeze(-1)}, mask, self.null_cond(len(items)))

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        if not self.cfg.random_rotation:
            return batch
        rot = random_rotations(len(batch), generator).to(batch.data["pos"].device)  # (B, 3, 3), drawn on the CPU
        return batch.with_data(pos=torch.bmm(batch.data["pos"], rot))

    # ------------------------------------------------------------------ network parts
    def build_embedder(self, width: int) -> nn.Module:
        return AtomEmbedder(len(self.elements), width, self.cfg.coord_scale)

    def build_heads(self, width: int) -> nn.Module:
        # the fixed layout needs one more class, "no atom in this slot"
        return AtomHeads(width, len(self.elements) + int(self.fixed), self.cfg.coord_scale)

    def inherit_rows(self, parent_data: dict[str, Any], parent_state: dict[str, Any]) -> dict[str, list[int]]:
        """Fine-tuning (``unite_sci.finetune``): the parent's row behind each row of the type tables, matched by
        atomic number, -1 for an element the parent never saw; padding and "no atom" map to theirs."""
        theirs = [int(z) for z in parent_state.get("elements") or parent_data.get("elements") or []]
        rows = [theirs.index(z) if z in theirs else -1 for z in self.elements]
        no_atom = [len(theirs) if parent_data.get("registers") == "fixed" else -1] if self.fixed else []
        return {"embedder.type_embed.weight": rows + [len(theirs)], "heads.types.weight": rows + no_atom,
                "heads.types.bias": rows + no_atom}

    def _targets(self, batch: Batch, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Type targets (B, K), coordinate targets (B, K, 3) and the coordinate mask (B, K)."""
        types, pos, mask = batch.data["types"], batch.data["pos"], batch.mask
        if not self.fixed:
            return types, pos, mask
        b, n = types.shape
        t = torch.full((b, k), len(self.elements), dtype=torch.long, device=types.device)  # "no atom"
        p = torch.zeros(b, k, 3, device=pos.device)
        m = torch.zeros(b, k, dtype=torch.bool, device=mask.device)
        t[:, :n] = torch.where(mask, types, t[:, :n])
        p[:, :n], m[:, :n] = pos, mask
        return t, p, m

    def reconstruction_loss(self, out: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits, pred = out["type_logits"], out["pos"]
        types, pos, mask = self._targets(batch, logits.shape[1])
        ce_mask = torch.ones_like(mask) if self.fixed else mask  # fixed: every slot says atom or not
        ce = F.cross_entropy(logits.transpose(1, 2).float(), types.clamp_max(logits.shape[-1] - 1),
                             reduction="none")  # (B, K)
        ce = masked_mean(ce, ce_mask).mean()  # per molecule, then over molecules
        se = ((pred.float() - pos) ** 2).sum(-1)  # (B, K) squared error, Angstrom^2
        mse = masked_mean(se, mask).mean()
        loss = self.cfg.type_weight * ce + self.cfg.coord_weight * mse
        parts = {"type_ce": ce.detach(), "coord_mse": mse.detach()}
        if self.cfg.distance_weight > 0:
            dist = pair_distance_mse(pred.float(), pos, mask, self.cfg.distance_cutoff)
            loss = loss + self.cfg.distance_weight * dist
            parts["dist_mse"] = dist.detach()
        return loss, parts

    # ------------------------------------------------------------------ generation
    def sample_sizes(self, num: int, generator: torch.Generator) -> Tensor | None:
        if self.fixed:
            return None
        if self.count_dist.sum() <= 0:
            self.build_splits()
        return torch.multinomial(self.count_dist.float(), num, replacement=True, generator=generator)

    def to_domain(self, out: dict[str, Tensor], mask: Tensor | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Molecules as (atomic numbers (n,), coordinates (n, 3) in Angstrom)."""
        types = out["type_logits"].argmax(-1).cpu()
        pos = out["pos"].float().cpu().numpy()
        elements = np.array(self.elements + [0])
        keep = (types < len(self.elements)) if self.fixed else mask.cpu()
        return [(elements[types[i][keep[i]].numpy()].astype(np.int64), pos[i][keep[i].numpy()])
                for i in range(types.shape[0])]

    def items_from_domain(self, objs: list[tuple[np.ndarray, np.ndarray]]) -> list:
        """Molecules read from files -> items ``collate`` accepts (centred; principal axes if configured)."""
        if self.cfg.canonical_frame:
            objs = [(z, principal_axes_frame(np.asarray(z), np.asarray(p, dtype=np.float32))) for z, p in objs]
        return [mdata.molecule_item(z, p) for z, p in objs]

    def batch_to_domain(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        elements = np.array(self.elements + [0])
        types, pos, mask = batch.data["types"].cpu(), batch.data["pos"].cpu().numpy(), batch.mask.cpu()
        return [(elements[types[i][mask[i]].numpy()], pos[i][mask[i].numpy()]) for i in range(len(batch))]

    # ------------------------------------------------------------------ metrics and files
    def _pool(self) -> dict[str, Any]:
        """Worker processes (0: all cores) and per-molecule time limit of every metrics call."""
        return {"workers": self.cfg.eval_workers, "time_limit_s": self.cfg.time_limit_s}

    def train_smiles(self) -> set[str]:
        from . import metrics

        if self._train_smiles is None:
            mols = self.molecules("train", frame=False)
            cache = self.reference_cache(f"train_smiles_{len(mols)}", ".txt")
            self._train_smiles = metrics.training_smiles(mols.z, mols.pos, cache, **self._pool())
        return self._train_smiles

    def geometry_reference(self) -> Geometry:
        """Geometry of the first ``GEOMETRY_REFERENCE`` training molecules (computed once, cached)."""
        from . import geometry

        if self._geometry_ref is None:
            mols = self.molecules("train", frame=False)
            n = min(GEOMETRY_REFERENCE, len(mols))
            cache = self.reference_cache(f"geometry_train_{n}", ".npz")
            self._geometry_ref = geometry.reference(mols.z[:n], mols.pos[:n], cache)
        return self._geometry_ref

    def evaluate(self, samples: list, per_sample_csv: str | None = None) -> dict[str, Any]:
        """Generation metrics; with ``geometry`` also the ``geometry/*`` diagnostics, and beside
        ``per_sample_csv`` (when given) a PNG of bond-length histograms, ``geometry/histogram_png``."""
        from . import metrics

        z, pos = [s[0] for s in samples], [s[1] for s in samples]
        train = self.train_smiles() if self.cfg.novelty else None
        out = metrics.evaluate_generation(z, pos, train, per_sample_csv, **self._pool())
        out["split"] = self.reference_notes()["split"]
        if self.cfg.geometry:
            from . import geometry

            ref, gen = self.geometry_reference(), geometry.measure(z, pos)
            out.update(geometry.compare(gen, ref))
            out["geometry/reference"] = (f"the first {ref.num_molecules:,} {self.reference_notes()['train']}; "
                                         "bonds: EDM distance-table order > 0")
            if per_sample_csv is not None:
                png = geometry.bond_length_png(beside(per_sample_csv, "bond_lengths.png"), gen, ref,
                                               labels=("generated", self.reference_notes()["label"]))
                out["geometry/histogram_png"] = str(png)
        return out

    def evaluate_reconstruction(self, inputs: list, recons: list) -> dict[str, Any]:
        from . import metrics

        return metrics.reconstruction_metrics(inputs, recons, **self._pool())

    def quick_metrics(self, samples: list) -> dict[str, float]:
        """Connected validity and EDM atom stability (percent), in this process (0.6-1.9 s for 200 real
        molecules on a shared CPU), without the training SMILES that novelty needs."""
        from . import metrics

        out = metrics.evaluate_generation([s[0] for s in samples], [s[1] for s in samples], None,
                                          workers=1, progress=False, time_limit_s=self.cfg.time_limit_s)
        return {k: out[k] for k in ("connected_validity", "edm/atom_stability")}

    def export(self, samples: list, out_dir: Path, properties: list[dict] | None = None) -> list[Path]:
        """samples.extxyz, samples.sdf (each record's perceived bonds, verdicts, SMILES and ``properties[i]``),
        samples_valid.sdf (the records RDKit reads sanitised, one molecule each), gallery.png, samples.npz."""
        from . import render

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        z, pos = [s[0] for s in samples], [s[1] for s in samples]
        paths = [out_dir / "samples.extxyz", out_dir / "samples.sdf", out_dir / "samples_valid.sdf",
                 out_dir / "gallery.png", out_dir / "samples.npz"]
        mio.write_extxyz(paths[0], z, pos)
        render.write_sdf(paths[1], z, pos, properties, valid_path=paths[2])
        render.gallery_png(paths[3], z, pos)
        mio.write_npz(paths[4], z, pos)  # exact coordinates (extxyz rounds to 1e-8 A): re-scoring repeats the numbers
        return paths

    # ------------------------------------------------------------------ physics (unite_sci/physics.py)
    def relax_settings(self) -> RelaxSettings:
        return RelaxSettings(str(self.cfg.force_field), self.cfg.relax_steps, self.cfg.relax_fmax)

    def relax(self, samples: list, out_dir: Path, progress: bool = True) -> dict[str, Any]:
        """Relax every molecule with ``data.force_field`` (see physics.py) into ``out_dir``: the
        relaxed molecules through :meth:`export` (a molecule that could not be relaxed as given, its
        error in its row), ``relax.csv`` one row per sample; resumable."""
        from . import physics

        settings = self.relax_settings()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows, relaxed = physics.relax_all(samples, settings, workers=self.cfg.eval_workers,
                                          time_limit_s=self.cfg.physics_time_limit_s, progress=progress, out_dir=out_dir)
        keep = ("strain_kcal_mol", "rmsd_A", "converged", "error")
        self.export([(s[0], p) for s, p in zip(samples, relaxed)], out_dir,
                    properties=[{f"relax_{k}": r[k] for k in keep} for r in rows])
        return physics.relax_summary(rows, settings)

    def physics(self, samples: list, source: Path) -> tuple[dict[str, Any], list[dict]]:
        """PoseBusters pass rates and force-field strain (see physics.py), per-sample rows in order."""
        from . import physics

        return physics.physics_report(samples, Path(source), self.relax_settings(), strain_under=self.cfg.strain_under,
                                      rmsd_under=self.cfg.rmsd_under, workers=self.cfg.eval_workers,
                                      time_limit_s=self.cfg.physics_time_limit_s)

    def export_reconstructions(self, inputs: list, recons: list, out_dir: Path) -> list[Path]:
        """:meth:`export` of the reconstructions, with gallery.png drawing the first 8 inputs each beside
        its reconstruction."""
        from . import render

        paths = self.export(recons, out_dir)
        pairs = [m for pair in zip(inputs, recons) for m in pair][:16]
        titles = [f"{kind} {i}" for i in range(len(pairs) // 2) for kind in ("input", "reconstruction")]
        render.gallery_png(Path(out_dir) / "gallery.png", [m[0] for m in pairs], [m[1] for m in pairs], titles=titles)
        return paths

    def load_samples(self, path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
        path = Path(path)
        if path.is_dir():
            found = [path / n for n in ("samples.npz", "samples.extxyz", "samples.sdf") if (path / n).exists()]
            if not found:
                raise DataError(f"'{path}' holds no samples.extxyz, samples.sdf or samples.npz")
            path = found[0]
        z, pos = mio.read_molecules(path)
        return list(zip(z, pos))

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"atom_count_distribution": self.count_dist.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "atom_count_distribution" in state:
            self.count_dist = state["atom_count_distribution"].to(torch.float64)
