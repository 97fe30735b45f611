"""Speed benchmark: training throughput and model-FLOP utilisation against a matmul measured in the
same run, the cost split of one step, padding share, sampling speed per solver.

    unite-sci benchmark speed [--out DIR] [modality=qm9 presets=tiny,small batch=128 steps=10]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a real step (forward + backward);
the matmul reference is a square fp32 (and bf16) GEMM of comparable size on the same threads.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from unite_sci.engine import load_config, machine_description, make_adapter
from unite_sci.protocol import markdown_table, write_report
from unite_sci.sampling import sample_latents
from unite_sci.trainer import Trainer, resolve_device


def matmul_flops(n: int = 1024, dtype: torch.dtype = torch.float32, seconds: float = 2.0,
                 device: str = "cpu") -> float:
    """Sustained FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def measure_preset(modality: str, preset: str, batch: int, steps: int, precision: str,
                   overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(modality, overrides=[f"model.preset={preset}", f"train.batch_size={batch}",
                                           f"train.precision={precision}", "train.max_steps=1",
                                           "train.progress=false", *overrides])
    adapter = make_adapter(cfg)
    tr = Trainer(cfg, adapter, Path("/tmp/unite-sci-speed"))
    data = tr.splits["train"]
    gen = torch.Generator().manual_seed(0)
    load = lambda: adapter.augment(adapter.collate([data[i] for i in range(batch)]), gen)  # noqa: E731
    b = load().to(tr.device)
    with FlopCounterMode(display=False) as fc:
        tr.train_step(b)
    flops = fc.get_total_flops()
    tr.train_step(b)  # warm-up
    step_s = _timed(lambda: tr.train_step(b), steps)
    m = tr.model
    autocast = torch.autocast(tr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        z0 = m.encode(b)
        split = {
            "data loading (collate + augment)": _timed(load, max(2, steps // 2)),
            "tokenize pass (forward)": _timed(lambda: m.encode(b), steps),
            "decoder + reconstruction loss (forward)": _timed(
                lambda: adapter.reconstruction_loss(m.decode(z0, b.mask), b), steps),
            "one flow pass (forward)": _timed(lambda: m.flow_losses(z0, b.cond, b.mask), steps)
            / cfg.flow.flow_batches,
        }
    fwd = sum(v for k, v in split.items() if "forward" in k)
    split["backward + optimiser (rest of the step)"] = max(step_s - fwd, 0.0)
    pad = 0.0 if b.mask is None else 1.0 - b.mask.float().mean().item()
    pad_random, pad_bucketed = padding_shares(adapter, data, batch)
    params = sum(p.numel() for p in m.parameters())
    return {"preset": preset, "precision": precision, "batch": batch, "params_M": params / 1e6,
            "step_s": step_s, "samples_per_s": batch / step_s, "flops_per_step": flops,
            "achieved_GFLOPs": flops / step_s / 1e9, "padding_share": pad,
            "padding_random_batches": pad_random, "padding_bucketed_batches": pad_bucketed, "cost_split_s": split,
            "peak_rss_MB": _peak_rss_mb(), "model": m, "adapter": adapter, "cfg": cfg}


def padding_shares(adapter, data, batch: int, steps: int = 200, bucket: int = 16) -> tuple[float, float]:
    """Share of padded element slots over ``steps`` batches: random batches vs size-bucketed ones."""
    from unite_sci.trainer import StepBatchSampler

    sizes = adapter.item_sizes(data)
    if sizes is None or len(data) < batch:
        return 0.0, 0.0
    sizes = torch.as_tensor(sizes)
    out = []
    for smp in (StepBatchSampler(len(data), batch, 0, 0),
                StepBatchSampler(len(data), batch, 0, 0, sizes=sizes, bucket=bucket)):
        real = padded = 0
        for s in range(steps):
            n = sizes[smp.indices(s)]
            real, padded = real + int(n.sum()), padded + int(n.max()) * len(n)
        out.append(1 - real / padded)
    return out[0], out[1]


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sampling_speed(m, adapter, cfg, num: int, solvers: list[tuple[str, int]]) -> list[dict[str, Any]]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    sizes = adapter.sample_sizes(num, gen)
    mask = adapter.layout.mask_from_sizes(sizes) if sizes is not None else None
    k = mask.shape[1] + adapter.layout.extra if mask is not None else adapter.layout.count
    dev = next(m.parameters()).device
    m.eval()
    for solver, steps in solvers:
        noise = torch.randn(num, k, cfg.model.latent_dim, generator=gen).to(dev)
        cond = torch.full((num,), m.encoder.null_class, device=dev)
        t0 = time.perf_counter()
        z, nfe = sample_latents(lambda x, t, c: m.denoiser.denoise(x, t, c, mask), noise, cond,
                                m.encoder.null_class, solver, steps, cfg.flow.shift, cfg.flow.clamp)
        with torch.no_grad():
            adapter.to_domain(m.decode(z, mask), mask)
        wall = time.perf_counter() - t0
        rows.append({"solver": solver, "steps": steps, "nfe": nfe, "samples_per_s": num / wall})
    return rows


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts = dict(o.split("=", 1) for o in overrides if "=" in o and "." not in o.split("=", 1)[0])
    passthrough = [o for o in overrides if "." in o.split("=", 1)[0]]
    modality = opts.get("modality", "qm9")
    presets = opts.get("presets", "tiny,small").split(",")
    batch, steps = int(opts.get("batch", 128)), int(opts.get("steps", 6))
    precisions = opts.get("precision", "fp32,bf16").split(",")
    device = resolve_device("auto")
    ref = {p: matmul_flops(dtype=torch.float32 if p == "fp32" else torch.bfloat16, device=device.type)
           for p in precisions}
    rows, splits, sampling = [], [], []
    for preset in presets:
        for prec in precisions:
            r = measure_preset(modality, preset, batch, steps, prec, passthrough)
            r["mfu_%"] = 100 * r["achieved_GFLOPs"] * 1e9 / ref[prec]
            rows.append(r)
            splits.append((f"{preset} / {prec}", r["cost_split_s"], r["step_s"]))
        if num_samples != 0:
            sampling += [{"preset": preset, **s} for s in sampling_speed(
                r["model"], r["adapter"], r["cfg"], num_samples or 64,
                [("euler", 25), ("heun", 25), ("heun", 50), ("dopri5", 0)])]
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
              if k not in ("cost_split_s", "model", "adapter", "cfg")} for r in rows]
    split_md = "".join(f"**{name}** (step {step:.3f} s)\n\n" + markdown_table(
        [{"part": k, "seconds": v, "share_%": 100 * v / step} for k, v in sp.items()],
        ["part", "seconds", "share_%"]) + "\n" for name, sp, step in splits)
    ref_md = "".join(f"- {p} matmul (1024^3), same threads: {v / 1e9:.1f} GFLOP/s\n" for p, v in ref.items())
    sections = [
        ("Machine", "\n".join(f"- {k}: {v}" for k, v in machine_description().items())),
        ("Matmul reference", ref_md),
        (f"Training ({modality}, batch {batch})", markdown_table(table, [
            "preset", "precision", "params_M", "samples_per_s", "achieved_GFLOPs", "mfu_%", "padding_share",
            "padding_random_batches", "padding_bucketed_batches", "peak_rss_MB"])),
        ("Cost split of one step", split_md),
        ("Sampling", markdown_table(sampling, ["preset", "solver", "steps", "nfe", "samples_per_s"])),
    ]
    data = {"machine": machine_description(), "matmul_flops": ref, "training": table,
            "cost_split": [{"run": n, "step_s": s, "parts": sp} for n, sp, s in splits], "sampling": sampling}
    Path(out).mkdir(parents=True, exist_ok=True)
    return write_report(out, f"unite-sci speed benchmark ({modality})", sections, data)
