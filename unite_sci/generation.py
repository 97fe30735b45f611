"""Sampling and reconstruction with a trained model: what the CLI, the Python API, the benchmarks and the
trainer's in-run sample hook all call. It sits below :mod:`unite_sci.engine` and :mod:`unite_sci.trainer`
(both import it; it imports neither).

    samples, info = generate(model, adapter, cfg.sample, num=64)   # domain objects + sampler facts
    inputs, recons = reconstruct_items(model, adapter, items)      # encode -> decode
"""
from __future__ import annotations

import time
from typing import Any

import torch

from .adapter import Adapter
from .conditions import Cond
from .config import SampleConfig
from .sampling import sample_latents
from .unite import Unite


@torch.no_grad()
def generate(model: Unite, adapter: Adapter, scfg: SampleConfig, num: int | None = None,
             cond: torch.Tensor | None = None, progress: bool = True, given: dict[str, Any] | None = None,
             conds: dict[str, torch.Tensor] | None = None, sizes: torch.Tensor | None = None,
             ) -> tuple[list[Any], dict[str, Any]]:
    """Sample ``num`` domain objects; returns them and the sampling settings and speed.

    ``cond``: class labels (num,). Structured conditions (an adapter with ``condition_specs``): ``given``
    fixes some by name in the user's units and the adapter draws the rest from the training data, or
    ``conds`` gives them ready-made (num rows, with the element counts ``sizes`` they imply)."""
    from tqdm import tqdm

    num = num or scfg.num
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(scfg.seed)
    if cond is None:  # class-balanced labels for conditional data, null otherwise
        cond = (torch.arange(num) % adapter.num_classes if adapter.num_classes
                else torch.full((num,), model.encoder.null_class))
    if conds is None:
        draw = getattr(adapter, "draw_conditions", None)
        conds, sizes = draw(num, gen, dict(given or {})) if draw is not None else ({}, None)
    if sizes is None:
        sizes = adapter.sample_sizes(num, gen)
    shift = model.cfg.flow.shift if scfg.shift is None else scfg.shift
    out: list[Any] = []
    nfe_total, t0 = 0, time.time()
    for lo in tqdm(range(0, num, scfg.batch_size), desc="sample", disable=not progress, dynamic_ncols=True):
        hi = min(lo + scfg.batch_size, num)
        mask = adapter.layout.mask_from_sizes(sizes[lo:hi]) if sizes is not None else None
        k = mask.shape[1] + adapter.layout.extra if mask is not None else adapter.layout.count
        noise = scfg.temperature * torch.randn(hi - lo, k, model.cfg.model.latent_dim, generator=gen).to(device)
        mask = mask.to(device) if mask is not None else None
        rows = Cond(cond[lo:hi], {k: v[lo:hi] for k, v in conds.items()}).to(device)
        regs = model.registers(mask, hi - lo, device, rows.extra)

        def denoise(x, t, c, sc=None, r=regs):  # guidance doubles the batch: repeat the registers with it
            return model.denoiser.denoise(x, t, c.label, r.repeat(x.shape[0] // r.mask.shape[0]), self_cond=sc,
                                          conds=c.extra)

        z, nfe = sample_latents(denoise, noise, cond=rows, null=model.encoder.null_class,
                                solver=scfg.solver, steps=scfg.steps, shift=shift, clamp=model.cfg.flow.clamp,
                                cfg=scfg.cfg, cfg_interval=tuple(scfg.cfg_interval), atol=scfg.atol,
                                rtol=scfg.rtol, self_condition=model.cfg.flow.self_condition > 0,
                                final_euler=scfg.final_euler)
        nfe_total += nfe
        dec = model.decode(z, mask, regs)
        if rows.extra:
            dec = adapter.apply_conditions(dec, rows.extra, mask)
        finish = getattr(adapter, "finish_samples", None)  # optional (AdapterBase): a generation-only repair
        out.extend(adapter.to_domain(finish(dec, mask) if finish is not None else dec, mask))
    wall = time.time() - t0
    info = {"num_samples": num, "solver": scfg.solver, "steps": scfg.steps, "final_euler": scfg.final_euler,
            "temperature": scfg.temperature,
            "time_shift": shift, "cfg_scale": scfg.cfg,
            "cfg_interval": list(scfg.cfg_interval), "seed": scfg.seed, "nfe_per_batch": nfe_total /
            max(1, -(-num // scfg.batch_size)), "sampling_wall_s": round(wall, 2),
            "samples_per_s": round(num / max(wall, 1e-9), 2)}
    return out, info


@torch.no_grad()
def reconstruct(model: Unite, adapter: Adapter, split: str = "test", num: int = 1000,
                batch_size: int = 256, progress: bool = True) -> tuple[list[Any], list[Any]]:
    """Encode -> decode ``num`` items of a split (no decoder noise); inputs and reconstructions."""
    data = adapter.build_splits()[split]
    return reconstruct_items(model, adapter, [data[i] for i in range(min(num, len(data)))], batch_size, progress)


@torch.no_grad()
def reconstruct_items(model: Unite, adapter: Adapter, items: list[Any], batch_size: int = 256,
                      progress: bool = True) -> tuple[list[Any], list[Any]]:
    """Encode -> decode data set items (no decoder noise); inputs and reconstructions as domain objects."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    inputs, recons = [], []
    for lo in tqdm(range(0, len(items), batch_size), desc="reconstruct", disable=not progress, dynamic_ncols=True):
        batch = adapter.collate(items[lo:lo + batch_size])
        inputs.extend(adapter.batch_to_domain(batch))
        batch = batch.to(device)
        regs = model.registers(batch.mask, len(batch), device, batch.conds)
        recons.extend(adapter.to_domain(model.decode(model.encode(batch, regs), batch.mask, regs), batch.mask))
    return inputs, recons
