"""Speed benchmark: training throughput and model-FLOP utilisation against a matmul measured in the
same run, the cost split of one step, padding share, sampling speed per solver.

    unite-sci benchmark speed [--out DIR] [modality=qm9 presets=tiny,small batch=128 steps=6]
                              [precision=fp32,bf16] [compile=false,true] [mem_batches=32,128] [stages=true]
                              [eval=qm9,mp20,images eval_num=200] [sampling=true] [profile=false]

Each modality's CPU default, eager against compiled, with the matmul rate of the same run (the other
sections skipped)::

    unite-sci benchmark speed modality=qm9,mp20,images presets=default batch=0 precision=fp32 \
        compile=false,true stages=false sampling=false mem_batches=[] eval=

``modality`` takes several modalities (every section but evaluation runs for each); ``presets=default`` is
each modality's own ``model.preset`` and ``batch=0`` its own ``train.batch_size`` (configs/<modality>.yaml).

Sections: training samples/s and MFU per preset and precision; the cost split of one step; padding;
sampling per solver; peak memory per preset and batch size (each in a fresh process); UNITE's joint
step against the two-stage baseline's phases; evaluation throughput serial against parallel per modality
(``eval=`` empty skips it). ``compile=false,true`` measures eager and ``torch.compile``d training steps
side by side (FLOPs always counted on the eager model; compiled graphs come from and go to the persistent
cache of :func:`unite_sci.compiling.persistent_compile_cache`). ``sampling=false`` skips sampling (``--num-samples``
sets its count, default 64). ``profile=true`` adds where each measured step's time goes (torch.profiler, self
time per operator kind) and the MFU bound of the model's own GEMM shapes, each timed alone on the same threads
(:mod:`unite_sci_benchmarks.profile`); ``stages=true`` also splits a UNITE step into its parts (forward +
backward each) and names the two-stage phase that pays each.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a real step (forward + backward);
the matmul reference is a square fp32 (and bf16) GEMM of comparable size on the same threads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from unite_sci.config import Precision, parse_options
from unite_sci.engine import load_config, machine_description, make_adapter
from unite_sci.protocol import markdown_table, write_report
from unite_sci.sampling import sample_latents
from unite_sci.schema import ranged
from unite_sci.trainer import Trainer, resolve_device

from unite_sci_benchmarks.costs import cuda_sync, eval_throughput, peak_memory, stage_costs, step_parts, timed
from unite_sci_benchmarks.profile import against_reference, profile_markdown, step_profile


@dataclass
class SpeedOptions:
    """This benchmark's ``key=value`` words without a dot (see the module docstring)."""

    modality: list[str] = field(default_factory=lambda: ["qm9"])
    presets: list[str] = field(default_factory=lambda: ["tiny", "small"])  # "default": the modality's own
    batch: int = ranged(128, lo=0)      # 0: each modality's own train.batch_size
    steps: int = ranged(6, lo=1)        # timed repetitions of each measured part
    precision: list[Precision] = field(default_factory=lambda: [Precision.fp32, Precision.bf16])
    compile: list[bool] = field(default_factory=lambda: [False])
    mem_batches: Optional[list[int]] = ranged(None, lo=1)  # None: 32 and ``batch``
    stages: bool = True
    eval: list[str] = field(default_factory=lambda: ["qm9", "mp20", "images"])  # modalities; empty: skip
    eval_num: int = ranged(200, lo=1)
    sampling: bool = True
    profile: bool = False               # torch.profiler per operator kind + the GEMM-shape MFU bound


def matmul_flops(n: int = 1024, dtype: torch.dtype = torch.float32, seconds: float = 2.0,
                 device: str = "cpu") -> float:
    """Sustained FLOP/s of an n x n x n matmul (on CUDA, fp32 means TF32 where
    ``torch.get_float32_matmul_precision()`` allows it)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    cuda_sync()  # the warm-up's kernels finish before the clock starts
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    cuda_sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def measure_preset(modality: str, preset: str, batch: int, steps: int, precision: str,
                   overrides: list[str], static_shapes: bool = False,
                   profile: bool = False) -> dict[str, Any]:
    """One training step of ``preset`` on one fixed batch: seconds, FLOPs, cost split, padding, peak GPU
    memory of the timed steps (None on a CPU), and the seconds of the two warm-up steps (``warmup_s``: with
    ``train.compile=true`` the compile, or the persistent cache's reload). ``static_shapes``: with
    ``train.compile=true``, compile for this batch's shapes instead of the trainer's dynamic ones (faster to
    compile and to run; the timed batch never changes shape). ``profile``: also profile the step on a CPU
    (:func:`unite_sci_benchmarks.profile.step_profile`)."""
    cfg = load_config(modality, overrides=[f"model.preset={preset}", f"train.batch_size={batch}",
                                           f"train.precision={precision}", "train.max_steps=1",
                                           "train.progress=false", *overrides])
    adapter = make_adapter(cfg)
    tr = Trainer(cfg, adapter, Path("/tmp/unite-sci-speed"))
    data = tr.splits["train"]
    gen = torch.Generator().manual_seed(0)
    load = lambda: adapter.augment(adapter.collate([data[i] for i in range(batch)]), gen)  # noqa: E731
    b = load().to(tr.device)
    # FLOPs of the eager model's forward + backward (a compiled graph hides its ops from the counter;
    # the optimiser's element-wise work is not counted in either case)
    with FlopCounterMode(display=False) as fc:
        loss, _ = tr.model(tr.adapter.augment(b, gen))
        loss.backward()
    flops = fc.get_total_flops()
    tr.model.zero_grad(set_to_none=True)
    if tr.compiled and static_shapes:
        tr.ddp = torch.compile(tr.model, dynamic=False)  # in place of the trainer's dynamic=True wrapper
    cuda = tr.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(tr.device)
    t0 = time.perf_counter()
    for _ in range(2 if tr.compiled else 1):  # warm-up (compiling, when asked, takes minutes)
        tr.train_step(b)
    warmup_s = time.perf_counter() - t0
    step_s = timed(lambda: tr.train_step(b), steps)
    prof = (step_profile(lambda: tr.train_step(b), steps, flops)
            if profile and tr.device.type == "cpu" else None)
    peak_gpu = torch.cuda.max_memory_allocated(tr.device) / 2**20 if cuda else None
    m = tr.model
    autocast = torch.autocast(tr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        regs = m.registers(b.mask, len(b.cond), tr.device)  # built once per step, as in training
        z0 = m.encode(b, regs)
        split = {
            "data loading (collate + augment)": timed(load, max(2, steps // 2)),
            "tokenize pass (forward)": timed(lambda: m.encode(b, regs), steps),
            "decoder + reconstruction loss (forward)": timed(
                lambda: adapter.reconstruction_loss(m.decode(z0, b.mask, regs), b), steps),
            "one flow pass (forward)": timed(lambda: m.flow_losses(z0, b.cond, regs), steps)
            / cfg.flow.flow_batches,
        }
    fwd = sum(v for k, v in split.items() if "forward" in k)
    split["backward + optimiser (rest of the step)"] = max(step_s - fwd, 0.0)
    pad = 0.0 if b.mask is None else 1.0 - b.mask.float().mean().item()
    pad_random, pad_bucketed = padding_shares(adapter, data, batch)
    params = sum(p.numel() for p in m.parameters())
    return {"preset": preset, "precision": precision, "compiled": tr.compiled, "batch": batch, "params_M": params / 1e6,
            "step_s": step_s, "warmup_s": warmup_s, "samples_per_s": batch / step_s, "flops_per_step": flops,
            "profile": prof,
            "achieved_GFLOPs": flops / step_s / 1e9, "padding_share": pad,
            "padding_random_batches": pad_random, "padding_bucketed_batches": pad_bucketed, "cost_split_s": split,
            "peak_gpu_MB": peak_gpu, "model": m, "adapter": adapter, "cfg": cfg}


def resolve_defaults(modality: str, presets: list[str], batch: int, overrides: list[str]) -> tuple[list[str], int]:
    """``presets`` and ``batch`` with ``default`` / 0 replaced by the modality's config values."""
    cfg = load_config(modality, overrides=overrides)
    return [str(cfg.model.preset) if p == "default" else p for p in presets], batch or cfg.train.batch_size


def side_by_side(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Eager and compiled training rows of the same modality, preset and precision as one row each."""
    out = {}
    for r in rows:
        key = (r["modality"], r["preset"], r["precision"])
        mode = "compiled" if r["compiled"] else "eager"
        row = out.setdefault(key, {"modality": key[0], "preset": key[1], "precision": key[2], "batch": r["batch"]})
        row.update({f"{mode}_samples_per_s": r["samples_per_s"], f"{mode}_mfu_%": r["mfu_%"]})
    both = [r for r in out.values() if "eager_samples_per_s" in r and "compiled_samples_per_s" in r]
    for r in both:
        r["speedup"] = r["compiled_samples_per_s"] / r["eager_samples_per_s"]
    return both


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


def sampling_speed(m, adapter, cfg, num: int, solvers: list[tuple[str, int]]) -> list[dict[str, Any]]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    sizes = adapter.sample_sizes(num, gen)
    mask = adapter.layout.mask_from_sizes(sizes) if sizes is not None else None
    k = mask.shape[1] + adapter.layout.extra if mask is not None else adapter.layout.count
    dev = next(m.parameters()).device
    mask = mask.to(dev) if mask is not None else None  # as generate() has it: the registers live on dev
    m.eval()
    for solver, steps in solvers:
        noise = torch.randn(num, k, cfg.model.latent_dim, generator=gen).to(dev)
        cond = torch.full((num,), m.encoder.null_class, device=dev)
        t0 = time.perf_counter()
        regs = m.registers(mask, num, dev)
        z, nfe = sample_latents(lambda x, t, c: m.denoiser.denoise(x, t, c, regs), noise, cond=cond,
                                null=m.encoder.null_class, solver=solver, steps=steps, shift=cfg.flow.shift,
                                clamp=cfg.flow.clamp)
        with torch.no_grad():
            adapter.to_domain(m.decode(z, mask, regs), mask)
        wall = time.perf_counter() - t0
        rows.append({"solver": solver, "steps": steps, "nfe": nfe, "samples_per_s": num / wall})
    return rows


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, passthrough = parse_options(SpeedOptions, overrides)
    modalities, steps = opts.modality, opts.steps
    precisions = [str(p) for p in opts.precision]  # the plain words key the report's tables
    compiled = [str(c).lower() for c in opts.compile]  # "false" / "true": words of a config override
    device = resolve_device("auto")
    ref = {p: matmul_flops(dtype=torch.float32 if p == "fp32" else torch.bfloat16, device=device.type)
           for p in precisions}
    plans = {m: resolve_defaults(m, opts.presets, opts.batch, passthrough) for m in modalities}
    rows, splits, sampling = [], [], []
    for modality, (presets, batch) in plans.items():
        for preset in presets:
            for prec in precisions:
                for comp in compiled:
                    r = measure_preset(modality, preset, batch, steps, prec, passthrough + [f"train.compile={comp}"],
                                       profile=opts.profile)
                    rows.append({"modality": modality, **r})
                    if comp == compiled[0]:
                        splits.append((f"{modality} / {preset} / {prec}", r["cost_split_s"], r["step_s"]))
            if opts.sampling:
                sampling += [{"modality": modality, "preset": preset, **s} for s in sampling_speed(
                    r["model"], r["adapter"], r["cfg"], num_samples or 64,
                    [("euler", 25), ("heun", 25), ("heun", 50), ("dopri5", 0)])]
    # the reference again after the training runs: a busy shared host lowers it, and the higher of the
    # two readings makes the utilisation the conservative one
    ref_before = dict(ref)
    ref_after = {p: matmul_flops(dtype=torch.float32 if p == "fp32" else torch.bfloat16, device=device.type)
                 for p in ref}
    ref = {p: max(ref_before[p], ref_after[p]) for p in ref}
    for r in rows:
        r["mfu_%"] = 100 * r["achieved_GFLOPs"] * 1e9 / ref[r["precision"]]
    memory = [{"modality": m, **peak_memory(m, preset, int(mb), "fp32", passthrough)}
              for m, (presets, batch) in plans.items() for preset in presets
              for mb in ([32, batch] if opts.mem_batches is None else opts.mem_batches)]
    stages = [{"modality": m, **r} for m, (presets, batch) in plans.items() for preset in presets
              for r in stage_costs(m, preset, batch, steps, passthrough)] if opts.stages else []
    parts = [r for m, (presets, batch) in plans.items() for preset in presets
             for r in step_parts(m, preset, batch, steps, passthrough)] if opts.stages else []
    evals = [r for m in opts.eval for r in eval_throughput(m, opts.eval_num, passthrough if m in modalities else [])]
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
              if k not in ("cost_split_s", "model", "adapter", "cfg", "profile")} for r in rows]
    profiles = [(f"{r['modality']} / {r['preset']} / {r['precision']} / "
                 f"{'compiled' if r['compiled'] else 'eager'}", against_reference(r["profile"], ref[r["precision"]]),
                 r["mfu_%"]) for r in rows if r["profile"]]
    split_md = "".join(f"**{name}** (step {step:.3f} s)\n\n" + markdown_table(
        [{"part": k, "seconds": v, "share_%": 100 * v / step} for k, v in sp.items()],
        ["part", "seconds", "share_%"]) + "\n" for name, sp, step in splits)
    ref_md = "".join(f"- {p} matmul (1024^3), same threads: {ref_before[p] / 1e9:.1f} GFLOP/s before the "
                     f"training runs, {ref_after[p] / 1e9:.1f} after; MFU below uses the higher\n" for p in ref)
    sections = [
        ("Machine", "\n".join(f"- {k}: {v}" for k, v in machine_description().items())),
        ("Matmul reference", ref_md),
        ("Training", markdown_table(table, [
            "modality", "preset", "precision", "compiled", "batch", "params_M", "warmup_s", "samples_per_s", "achieved_GFLOPs", "mfu_%", "padding_share",
            "padding_random_batches", "padding_bucketed_batches"])),
        ("Eager against compiled (MFU against the matmul reference above)", markdown_table(
            side_by_side(table), ["modality", "preset", "precision", "batch", "eager_samples_per_s", "eager_mfu_%",
                                  "compiled_samples_per_s", "compiled_mfu_%", "speedup"])),
        ("Cost split of one step", split_md),
        ("Where the step's time goes (torch.profiler, self time per operator kind)",
         "".join(profile_markdown(*p) for p in profiles) or "|---"),
        ("Sampling", markdown_table(sampling, ["modality", "preset", "solver", "steps", "nfe", "samples_per_s"])),
        ("Peak memory of two training steps (fp32, a fresh process each)", markdown_table(memory, [
            "modality", "preset", "batch", "rss_before_step_MB", "peak_rss_MB", "step_increase_MB", "peak_gpu_MB", "error"])),
        ("UNITE single-stage step against the two-stage baseline's phases (fp32)",
         markdown_table(stages, ["modality", "preset", "method", "phase", "step_s", "samples_per_s"])
         + "\nQuality at equal minutes: `unite-sci benchmark qm9` (both methods, same budget).\n" if stages else "|---"),
        ("What a UNITE step is made of (eager, forward + backward of each part; the two-stage phase that pays it)",
         markdown_table(parts, ["modality", "preset", "part", "seconds", "share_of_unite_step_%", "in_unite_step",
                                "in_two_stage_phase"])),
        ("Evaluation throughput: generation metrics of real test items, serial against parallel",
         markdown_table(evals, ["modality", "mode", "workers", "items", "seconds", "items_per_s", "speedup"])),
    ]
    data = {"machine": machine_description(), "matmul_flops": ref, "matmul_flops_before": ref_before,
            "matmul_flops_after": ref_after, "training": table, "eager_vs_compiled": side_by_side(table),
            "cost_split": [{"run": n, "step_s": s, "parts": sp} for n, sp, s in splits], "sampling": sampling,
            "profiles": [{"run": n, **p} for n, p, _ in profiles],
            "memory": memory, "stages": stages, "step_parts": parts, "evaluation": evals}
    Path(out).mkdir(parents=True, exist_ok=True)
    # drop the tables of parts not measured (a header and no rows)
    sections = [(h, body) for h, body in sections if not body.strip().splitlines()[-1].startswith("|---")]
    return write_report(out, f"unite-sci speed benchmark ({', '.join(modalities)})", sections, data)
