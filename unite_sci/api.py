"""A trained checkpoint as a tool: the Generative Encoder as tokenizer, the decoder, the sampler.

    import unite_sci
    m = unite_sci.load("runs/<name>/checkpoints/last.pt")
    objs = m.read("samples/")                 # the modality's reader (the files `unite-sci sample` writes)
    lat = m.encode(objs)                      # Latents: each sample's real registers (k_i, C) + a pooled (C,)
    again = m.decode(lat)                     # domain objects
    recons, report = m.reconstruct(objs)     # decode(encode(x)) and the modality's reconstruction report
    new = m.sample(16)                        # unconditional; m.sample(10, condition={"class": 3})

Encoding runs the Generative Encoder in its tokenizer mode (registers start from seeded noise, so the
same inputs and ``seed`` give the same latents). Decoding uses no decoder noise. An adapter takes part
when it has ``items_from_domain`` (objects read from files -> the items its ``collate`` accepts).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .engine import LoadedModel, class_condition, generate, load_model, reconstruct_items, structured_condition
from .errors import UserError
from .files import atomic_write


@dataclass
class Latents:
    """Per-sample latents: ``per_register[i]`` (k_i, C) holds sample i's real registers in register order
    (one per element, then the layout's extra registers); ``pooled`` (B, C) is their mean."""

    per_register: list[np.ndarray]
    pooled: np.ndarray

    def __len__(self) -> int:
        return len(self.per_register)

    def save(self, path: str | Path, **meta: Any) -> Path:
        """One npz: ``latents`` (sum k_i, C) concatenated, ``sizes`` (B,), ``pooled`` (B, C), and ``meta``."""
        sizes = np.array([len(z) for z in self.per_register], dtype=np.int64)
        flat = (np.concatenate(self.per_register) if self.per_register
                else np.zeros((0, self.pooled.shape[-1]), np.float32))
        extra = {k: np.asarray(v) for k, v in meta.items()}
        atomic_write(Path(path), lambda f: np.savez(f, latents=flat, sizes=sizes, pooled=self.pooled, **extra),
                     binary=True)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Latents":
        try:
            with np.load(path, allow_pickle=False) as f:
                flat, sizes, pooled = f["latents"], f["sizes"], f["pooled"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"'{path}' is not a latents file written by `unite-sci encode` ({e})") from None
        return cls(np.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) else [], pooled)


class Model:
    """Encode, decode, reconstruct and sample with one checkpoint (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 256):
        self.loaded, self.batch_size = loaded, batch_size
        self.model, self.adapter, self.cfg = loaded.model, loaded.adapter, loaded.cfg
        self.device = next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def read(self, path: str | Path) -> list[Any]:
        """Domain objects from a file or folder in the modality's formats."""
        if not Path(path).exists():
            raise UserError(f"inputs '{path}' do not exist")
        return self.adapter.load_samples(Path(path))

    def _items(self, objs: Sequence[Any]) -> list[Any]:
        convert = getattr(self.adapter, "items_from_domain", None)
        if convert is None:
            raise UserError(f"the {self.adapter.name!r} adapter cannot take objects from files "
                            "(it has no items_from_domain method)")
        if not len(objs):
            raise UserError("no inputs to encode")
        return convert(list(objs))

    def _batches(self, items: list[Any]):
        for lo in range(0, len(items), self.batch_size):
            yield self.adapter.collate(items[lo:lo + self.batch_size]).to(self.device)

    # ------------------------------------------------------------------ the tool
    def encode(self, objs: Sequence[Any], seed: int = 0) -> Latents:
        """Domain objects -> their latents (the Generative Encoder in tokenizer mode)."""
        return self.encode_items(self._items(objs), seed)

    @torch.no_grad()
    def encode_items(self, items: Sequence[Any], seed: int = 0) -> Latents:
        """Data set items (what the adapter's ``collate`` takes) -> their latents."""
        self.model.eval()
        per, pooled = [], []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in self._batches(list(items)):
                regs = self.model.registers(batch.mask, len(batch), self.device, batch.conds)
                z = self.model.encode(batch, regs).float()  # (B, K, C)
                for zi, mi in zip(z, regs.mask):
                    per.append(zi[mi].cpu().numpy())
                pooled.append(((z * regs.mask.unsqueeze(-1)).sum(1) / regs.mask.sum(1, keepdim=True)).cpu().numpy())
        return Latents(per, np.concatenate(pooled))

    @torch.no_grad()
    def decode(self, latents: Latents) -> list[Any]:
        """Latents -> domain objects (no decoder noise)."""
        self.model.eval()
        layout, c = self.model.encoder.layout, self.cfg.model.latent_dim
        out: list[Any] = []
        for lo in range(0, len(latents), self.batch_size):
            chunk = latents.per_register[lo:lo + self.batch_size]
            if any(z.ndim != 2 or z.shape[1] != c for z in chunk):
                raise UserError(f"latents must be (registers, {c}) per sample for this checkpoint")
            if layout.per_element:
                sizes = torch.tensor([len(z) - layout.extra for z in chunk])
                mask = layout.mask_from_sizes(sizes).to(self.device)
            else:
                mask = None
            regs = self.model.registers(mask, len(chunk), self.device)
            z = torch.zeros(len(chunk), regs.mask.shape[1], c, device=self.device)
            for i, zi in enumerate(chunk):
                z[i, regs.mask[i]] = torch.from_numpy(zi).to(self.device, torch.float32)
            out.extend(self.adapter.to_domain(self.model.decode(z, mask, regs), mask))
        return out

    def reconstruct(self, objs: Sequence[Any], seed: int = 0) -> tuple[list[Any], dict[str, Any]]:
        """decode(encode(objs)) and the modality's reconstruction report (match rate, RMSD...), as the
        benchmarks reconstruct test items (:func:`engine.reconstruct_items`)."""
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            inputs, recons = reconstruct_items(self.model, self.adapter, self._items(objs), self.batch_size,
                                               progress=False)
        return recons, self.adapter.evaluate_reconstruction(inputs, recons)

    def sample(self, num: int, condition: dict[str, Any] | int | None = None, seed: int | None = None,
               progress: bool = False) -> list[Any]:
        """``num`` new samples; ``condition``: a class index (``{"class": 3}`` or ``3``) for conditional data,
        or the adapter's structured conditions by name (``{"gap": 300.0}``, ``{"composition": "NaCl"}``)."""
        if num < 1:
            raise UserError(f"num must be >= 1, got {num}")
        cond = class_condition(self.adapter, num, condition)
        scfg = self.cfg.sample if seed is None else replace(self.cfg.sample, seed=seed)
        samples, _ = generate(self.model, self.adapter, scfg, num, cond=cond, progress=progress,
                              given=structured_condition(condition))
        return samples


def load(checkpoint: str | Path, device: str = "auto", use_ema: bool | None = None,
         overrides: Sequence[str] = ()) -> Model:
    """A checkpoint, or a shipped model by name (``load("NAME")``, see ``unite-sci list``), as a :class:`Model`
    (EMA weights unless the run said otherwise)."""
    return Model(load_model(checkpoint, device, use_ema, overrides))
