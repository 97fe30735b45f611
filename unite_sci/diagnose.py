"""Where generation loses quality: the decoder, the denoiser's last steps, or the path from noise.

``unite-sci diagnose --checkpoint C`` scores, with the adapter's quick generation metrics
(``quick_metrics``), real test items pushed through each stage of the model:

- ``real``: the items themselves.
- ``decoder``: decode(z + sigma eps) for growing sigma, in units of the flow's N(0, I) noise: how precisely
  the denoiser must land for the decoder to still give valid objects. sigma = 0 is the reconstruction,
  the ceiling of every row below.
- ``one_shot``: decode(x1_hat(x_t, t)) with ``x_t = t z + (1 - t) eps`` (SPEC's convention, t = 1 clean), and
  the latent mean-squared errors of x_t and of x1_hat against z. Near t = 1 an x1_hat worse than x_t is a
  precision floor of the denoiser.
- ``ode_from``: Heun integration of the sampler's ODE from ``x_t0`` to t = 1 (SDEdit-style). A flow that has
  learned the data ends on sharp, valid objects; one that ends where ``one_shot`` at t0 did follows its
  first guess (outputs pulled toward the mean) instead of adding detail.
- ``generated``: the run's sampler from pure noise, as ``unite-sci sample`` draws (and
  ``generated/temperature=1`` beside it when the run samples at a lowered ``sample.temperature``).

All rows use the null condition and the same noise per item. Metrics are the adapter's, in its units.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from . import collapse
from .flow import interpolate, x_to_velocity
from .sampling import integrate

SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2)
TIMES = (0.3, 0.5, 0.7, 0.9, 0.95, 0.98)
STARTS = (0.3, 0.5, 0.7, 0.9)

Denoise = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, K, C), t (B,)) -> x1_hat (B, K, C)


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """Mean squared difference per channel over real registers; a, b (B, K, C), mask (B, K) bool."""
    m = mask.unsqueeze(-1).to(a.dtype)
    return float(((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp_min(1))


def one_shot(denoise: Denoise, z: Tensor, eps: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """(x_t, x1_hat(x_t, t)) for clean latents z and noise eps, both (B, K, C)."""
    tt = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
    x_t = interpolate(z, eps, tt)
    return x_t, denoise(x_t, tt)


def ode_from(denoise: Denoise, x_t0: Tensor, t0: float, steps: int, clamp: float = 0.05) -> Tensor:
    """Integrate the sampler's ODE ``dx/dt = (x1_hat - x) / max(1 - t, clamp)`` from t0 to 1 with Heun on a
    uniform grid, the last step Euler (it ends on the denoiser's own last prediction, so the row measures
    the path and not the corrector at t = 1); s in [0, 1] maps to t = t0 + (1 - t0) s, dx/ds = (1 - t0) dx/dt."""
    def velocity(x: Tensor, s: Tensor) -> Tensor:
        t = t0 + (1.0 - t0) * s
        return (1.0 - t0) * x_to_velocity(denoise(x, t), x, t, clamp)

    return integrate(velocity, x_t0, solver="heun", steps=steps, shift=1.0, final_euler=True)[0]


def noise_generator(seed: int) -> torch.Generator:
    """The generator of the diagnostics' own noise (decoder sigma, x_t). Seeded apart from ``seed`` itself:
    the encoder's register noise is drawn after ``torch.manual_seed(seed)``, and the same seed here made the
    first eps equal to that noise for fixed register layouts, so the one-shot rows scored too well."""
    return torch.Generator().manual_seed(seed + 0x5EED_0000)


@torch.no_grad()
def latent_diagnostics(model, adapter, items: Sequence[Any], *, sigmas: Sequence[float] = SIGMAS,
                       times: Sequence[float] = TIMES, starts: Sequence[float] = STARTS, ode_steps: int = 10,
                       batch_size: int = 256, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Each stage's decoded objects scored by ``adapter.quick_metrics``; see the module docstring.

    Returns ``{"rows": {stage: metrics}, "latent": {name: value}}`` with the latent RMS and MSEs (per channel,
    over real registers)."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the encoder's own register noise, without moving the caller's stream
        objs, sq, weights = _stages(model, adapter, items, gen=noise_generator(seed), sigmas=sigmas,
                                    times=times, starts=starts, ode_steps=ode_steps, batch_size=batch_size,
                                    progress=progress)
    w = torch.tensor(weights)
    latent = {k: float((torch.tensor(v) * w).sum() / w.sum()) for k, v in sq.items()}
    latent["latent_rms"] = latent["latent_rms"] ** 0.5
    rows = {k: adapter.quick_metrics(v) for k, v in objs.items()}
    return {"rows": rows, "latent": latent}


def _stages(model, adapter, items, *, gen, sigmas, times, starts, ode_steps, batch_size, progress):
    """The loop of :func:`latent_diagnostics`: decoded objects per stage, latent MSEs per batch and the
    batches' real-register counts (their weights)."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    sc = model.cfg.flow.self_condition > 0
    objs: dict[str, list[Any]] = {}
    sq: dict[str, list[float]] = {}
    weights: list[float] = []
    for lo in tqdm(range(0, len(items), batch_size), desc="diagnose", disable=not progress, dynamic_ncols=True):
        batch = adapter.collate(list(items[lo:lo + batch_size]))
        objs.setdefault("real", []).extend(adapter.batch_to_domain(batch))
        batch = batch.to(device)
        b = len(batch)
        regs = model.registers(batch.mask, b, device, batch.conds)
        z = model.encode(batch, regs)  # (B, K, C)
        eps = torch.randn(z.shape, generator=gen).to(device)
        null = torch.full((b,), model.encoder.null_class, dtype=torch.long, device=device)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            t = t.expand(b) if t.dim() == 0 else t
            return model.denoiser.denoise(x, t, null, regs, self_cond=torch.zeros_like(x) if sc else None)

        def decoded(key: str, lat: Tensor) -> None:
            objs.setdefault(key, []).extend(adapter.to_domain(model.decode(lat, batch.mask, regs), batch.mask))

        weights.append(float(regs.mask.sum()))
        sq.setdefault("latent_rms", []).append(masked_mse(z, torch.zeros_like(z), regs.mask))
        for s in sigmas:
            decoded(f"decoder/sigma={s:g}", z + s * eps)
        for t in times:
            x_t, x1 = one_shot(denoise, z, eps, t)
            sq.setdefault(f"one_shot/t={t:g}/mse_x_t", []).append(masked_mse(x_t, z, regs.mask))
            sq.setdefault(f"one_shot/t={t:g}/mse_x1_hat", []).append(masked_mse(x1, z, regs.mask))
            decoded(f"one_shot/t={t:g}", x1)
        for t0 in starts:
            x_t0 = interpolate(z, eps, torch.full((b,), t0, device=device))
            x = ode_from(denoise, x_t0, t0, ode_steps, model.cfg.flow.clamp)
            sq.setdefault(f"ode_from/t0={t0:g}/mse", []).append(masked_mse(x, z, regs.mask))
            decoded(f"ode_from/t0={t0:g}", x)
    return objs, sq, weights


def run_diagnose(checkpoint: str, out: str | None = None, num: int = 300, seed: int = 0, ode_steps: int = 10,
                 device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Load ``checkpoint``, run :func:`latent_diagnostics` on ``num`` test items and the sampler on ``num``
    draws; write report.json, report.md and diagnose.png into ``out`` when given."""
    from .engine import generate, load_model, provenance
    from .errors import UserError
    from .files import writable_dir, write_json, write_text

    if num < 2:
        raise UserError(f"--num must be >= 2, got {num}")
    if ode_steps < 1:
        raise UserError(f"--ode-steps must be >= 1, got {ode_steps}")
    folder = writable_dir(out) if out else None
    loaded = load_model(checkpoint, device)
    model, adapter = loaded.model, loaded.adapter
    test = adapter.build_splits()["test"]
    items = [test[i] for i in range(min(num, len(test)))]
    t0 = time.time()
    report = latent_diagnostics(model, adapter, items, ode_steps=ode_steps, seed=seed, progress=progress)
    if not any(report["rows"].values()):
        raise UserError(f"the {adapter.name!r} adapter has no quick_metrics to score the stages with")
    samples, info = generate(model, adapter, loaded.cfg.sample, len(items), progress=progress)
    report["rows"]["generated"] = adapter.quick_metrics(samples)
    if loaded.cfg.sample.temperature != 1.0:  # the model's own distribution beside a lowered temperature
        one = replace(loaded.cfg.sample, temperature=1.0)
        report["rows"]["generated/temperature=1"] = adapter.quick_metrics(
            generate(model, adapter, one, len(items), progress=progress)[0])
    report.update({"num_items": len(items), "seed": seed, "ode_steps": ode_steps, "sampler": info,
                   "wall_s": round(time.time() - t0, 1), **provenance(loaded)})
    report["warnings"] = health_warnings(report["rows"], training_rows(checkpoint), report["latent"])
    for line in report["warnings"]:
        collapse.warn(line)
    if folder is not None:
        write_json(report, folder / "report.json")
        write_text(markdown(report), folder / "report.md")
        plot(report, folder / "diagnose.png")
    return report


def training_rows(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The logged training rows of the run that wrote ``checkpoint`` (``<run>/metrics.jsonl`` beside its
    ``checkpoints/`` folder, or beside the file itself); empty when there is none (a shipped model)."""
    import json

    ckpt = Path(checkpoint)
    for log in (ckpt.parent.parent / "metrics.jsonl", ckpt.parent / "metrics.jsonl"):
        if log.is_file():
            rows = []
            for line in log.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by a killed run
                    continue
            return rows
    return []


def health_warnings(rows: dict[str, dict[str, float]], logged: list[dict[str, Any]],
                    latent: dict[str, float] | None = None) -> list[str]:
    """Collapse of the generated rows (``collapse.collapse_warning``), a stalled reconstruction in the
    training log (``collapse.reconstruction_stalled``) and a denoiser blind to its input
    (``collapse.denoiser_blind``), one line each."""
    found = [collapse.collapse_warning(r, f"{stage} samples") for stage, r in rows.items()
             if stage.startswith("generated")]
    found.append(collapse.reconstruction_stalled(logged))
    found.append(collapse.denoiser_blind(latent or {}))
    return [w for w in found if w]


def markdown(report: dict[str, Any]) -> str:
    """The rows as one table: stage, each metric, and the latent MSEs where the stage has them."""
    rows, lat = report["rows"], report["latent"]
    keys = sorted({k for r in rows.values() for k in r})
    head = ["stage", *keys, "latent MSE vs z"]
    lines = [f"# Latent diagnostics of {report.get('checkpoint', '?')} ({report.get('train_steps', '?')} steps)", "",
             f"{report['num_items']} test items, seed {report['seed']}; latent RMS {lat['latent_rms']:.3f} "
             "(noise eps is N(0, I)); ODE: Heun, "
             f"{report['ode_steps']} steps.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage, r in rows.items():
        mse = ", ".join(f"{k.rsplit('/', 1)[-1]} {v:.4f}" for k, v in lat.items() if k.startswith(stage + "/"))
        lines.append("| " + " | ".join([stage, *(f"{r.get(k, float('nan')):.2f}" for k in keys), mse]) + " |")
    lines += ["", *(f"**warning**: {w}" for w in report.get("warnings", []))] if report.get("warnings") else []
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """One row of panels per metric: decoder tolerance against sigma; the denoiser's one-shot prediction and
    the ODE's end against the t they start from. Reconstruction and generated values as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    keys = sorted({k for r in rows.values() for k in r})
    views = [("latent noise sigma added to z", [("decoder/sigma=", "decode(z + sigma eps)", "o")]),
             ("t of x_t = t z + (1 - t) eps", [("one_shot/t=", "decode(x1_hat(x_t))", "o"),
                                               ("ode_from/t0=", "decode(ODE from x_t to t = 1)", "s")])]
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 3.6 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        for j, (xlabel, curves) in enumerate(views):
            ax = axes[i, j]
            for prefix, label, marker in curves:
                pts = sorted((float(s[len(prefix):]), r[key]) for s, r in rows.items() if s.startswith(prefix))
                if pts:
                    ax.plot(*zip(*pts), marker=marker, label=label)
            for stage, style, name in (("decoder/sigma=0", "--", "reconstruction"), ("generated", ":", "generated")):
                if key in rows.get(stage, {}):
                    ax.axhline(rows[stage][key], linestyle=style, color="grey", label=name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize="small")
    fig.suptitle(f"where generation loses quality ({report.get('train_steps', '?')} training steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
