"""Parts of the speed benchmark beyond one training step: evaluation throughput serial against parallel,
peak memory per preset and batch size (each in a fresh process), the step cost of the two-stage
baseline's phases beside UNITE's single-stage step, and what a UNITE step is made of.

Everything goes through the adapter API, so every registered modality is measured the same way.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import torch

from unite_sci.engine import load_config, make_adapter
from unite_sci.parallel import available_cpus
from unite_sci.trainer import Trainer
from unite_sci.unite import Phase


# ---------------------------------------------------------------------------- timing
def cuda_sync() -> None:
    """Wait for the GPU's queued work. CUDA runs asynchronously (and training never waits for the host):
    a clock read without it times the kernel launches, not the kernels."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Any, reps: int) -> float:
    """Seconds per call of ``fn`` over ``reps`` calls, the GPU's work included."""
    cuda_sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    cuda_sync()
    return (time.perf_counter() - t0) / reps


# ---------------------------------------------------------------------------- evaluation throughput
def _real_samples(adapter: Any, num: int) -> list[Any]:
    """``num`` real test items in the adapter's sample form (what ``evaluate`` receives from a sampler)."""
    test = adapter.build_splits()["test"]
    n = min(num, len(test))
    out: list[Any] = []
    for lo in range(0, n, 256):
        out += adapter.batch_to_domain(adapter.collate([test[i] for i in range(lo, min(lo + 256, n))]))
    return out


def eval_throughput(modality: str, num: int, overrides: list[str] = ()) -> list[dict[str, Any]]:
    """Generation metrics of ``num`` real test items, serial against parallel.

    Parallel means worker processes where the modality has ``data.eval_workers`` (molecules, crystals:
    RDKit / StructureMatcher per item) and torch threads otherwise (images: Inception features). A warm-up
    on a few items first builds the one-time caches (training SMILES, reference statistics), which are
    not part of the throughput.
    """
    cpus = available_cpus()  # what data.eval_workers=0 means (unite_sci.parallel.resolve_workers)
    base = load_config(modality, overrides=[o for o in overrides if o.startswith("data.")])
    has_workers = hasattr(base.data, "eval_workers")
    rows = []
    threads = torch.get_num_threads()
    for label, workers in (("serial", 1), ("parallel", cpus)):
        cfg = load_config(modality, overrides=[*(o for o in overrides if o.startswith("data.")),
                                               *([f"data.eval_workers={workers}"] if has_workers else [])])
        adapter = make_adapter(cfg)
        samples = _real_samples(adapter, num)
        adapter.evaluate(samples[: min(8, len(samples))])  # warm-up: caches, lazy imports
        if not has_workers:
            torch.set_num_threads(workers)
        t0 = time.perf_counter()
        adapter.evaluate(samples)
        wall = time.perf_counter() - t0
        torch.set_num_threads(threads)
        rows.append({"modality": modality, "mode": label,
                     "workers": f"{workers} {'processes' if has_workers else 'threads'}",
                     "items": len(samples), "seconds": wall, "items_per_s": len(samples) / wall})
    rows[1]["speedup"] = rows[0]["seconds"] / rows[1]["seconds"]
    return rows


# ---------------------------------------------------------------------------- peak memory
def _memory_child(modality: str, preset: str, batch: int, precision: str, overrides: list[str],
                  queue: Any) -> None:
    try:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
        cfg = load_config(modality, overrides=[f"model.preset={preset}", f"train.batch_size={batch}",
                                               f"train.precision={precision}", "train.max_steps=1",
                                               "train.progress=false", *overrides])
        tr = Trainer(cfg, make_adapter(cfg), Path("/tmp/unite-sci-speed"))
        b = tr.adapter.collate([tr.splits["train"][i] for i in range(batch)]).to(tr.device)
        before = _status_mb("VmRSS")
        if tr.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # the second step holds the optimiser state too
            tr.train_step(b)
        peak = _status_mb("VmHWM")  # this process image's peak (ru_maxrss would carry the parent's over exec)
        gpu = torch.cuda.max_memory_allocated() / 2**20 if tr.device.type == "cuda" else None
        queue.put({"preset": preset, "batch": batch, "precision": precision, "rss_before_step_MB": before,
                   "peak_rss_MB": peak, "step_increase_MB": peak - before, "peak_gpu_MB": gpu})
    except Exception as e:  # noqa: BLE001 - reported as a row, the benchmark goes on
        queue.put({"preset": preset, "batch": batch, "precision": precision, "error": f"{type(e).__name__}: {e}"})


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc, in MB; NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith(key + ":")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def peak_memory(modality: str, preset: str, batch: int, precision: str = "fp32",
                overrides: list[str] = ()) -> dict[str, Any]:
    """Peak memory of two training steps, measured in a fresh process so that presets do not mix."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(modality, preset, batch, precision, list(overrides), queue))
    proc.start()
    try:
        row = queue.get(timeout=1800)
    finally:
        proc.join(timeout=60)
    return row


# ---------------------------------------------------------------------------- two-stage phases
def _trainer_and_batch(modality: str, batch: int, overrides: list[str]) -> tuple[Trainer, Any]:
    """A trainer of ``modality`` with ``overrides`` and its first ``batch`` training items, collated on its device."""
    cfg = load_config(modality, overrides=overrides)
    tr = Trainer(cfg, make_adapter(cfg), Path("/tmp/unite-sci-speed"))
    return tr, tr.adapter.collate([tr.splits["train"][i] for i in range(batch)]).to(tr.device)


def _step_time(tr: Trainer, batch: Any, reps: int) -> float:
    tr.train_step(batch)  # warm-up
    return timed(lambda: tr.train_step(batch), reps)


def stage_costs(modality: str, preset: str, batch: int, reps: int, overrides: list[str] = ()) -> list[dict[str, Any]]:
    """Seconds per step: UNITE's joint step against the two-stage baseline's tokenizer and denoiser steps
    (same data, same preset). Quality at equal minutes is the modality benchmarks' job (``benchmark qm9``)."""
    common = [f"model.preset={preset}", f"train.batch_size={batch}", "train.max_steps=1", "train.progress=false",
              *overrides]
    rows = []
    single, b = _trainer_and_batch(modality, batch, common)
    t = _step_time(single, b, reps)
    rows.append({"preset": preset, "method": "UNITE single-stage", "phase": Phase.JOINT.value, "step_s": t,
                 "samples_per_s": batch / t})
    cfg = load_config(modality, overrides=common + ["train.mode=two_stage", "model.shared_weights=false"])
    two = Trainer(cfg, make_adapter(cfg), Path("/tmp/unite-sci-speed"))
    for phase in (Phase.TOKENIZER, Phase.DENOISER):
        two.enter_phase(phase)  # as fit() switches: optimisers rebuilt, EMA warm-up restarted
        t = _step_time(two, b, reps)
        rows.append({"preset": preset, "method": "two-stage baseline", "phase": phase.value, "step_s": t,
                     "samples_per_s": batch / t})
    return rows


def step_parts(modality: str, preset: str, batch: int, reps: int, overrides: list[str] = ()) -> list[dict[str, Any]]:
    """What one UNITE step is made of, forward + backward of each part on one batch, and which part the
    two-stage baseline's phases pay too: the tokenization pass, the decoder with its reconstruction loss,
    one flow pass, the optimiser and EMA update; the frozen tokenizer's forward (no gradient) is what the
    two-stage denoiser phase pays instead of the tokenization pass's backward."""
    tr, b = _trainer_and_batch(modality, batch, [f"model.preset={preset}", f"train.batch_size={batch}",
                                                 "train.max_steps=1", "train.progress=false", *overrides])
    cfg, m, adapter = tr.cfg, tr.model, tr.adapter
    m.train()
    regs = m.registers(b.mask, len(b.cond), tr.device, b.conds)
    with torch.no_grad():
        z0 = m.encode(b, regs)

    def tokenize() -> None:
        m.encode(b, regs).square().mean().backward()

    def decode() -> None:
        z = z0.clone().requires_grad_(True)
        adapter.reconstruction_loss(m.decode(m.decoder_noise(z, regs), b.mask, regs), b)[0].backward()

    def flow() -> None:
        m.flow_losses(z0, b.cond, regs, b.conds)[0].backward()

    def frozen_tokenize() -> None:
        with torch.no_grad():
            m.encode(b, regs)

    def optimiser() -> None:
        for o in tr.optimizers:
            o.step()
        tr.ema.update(m, torch.ones((), dtype=torch.bool))

    step = _step_time(tr, b, reps)
    parts = [("tokenization pass (GE on inputs + registers)", tokenize, "yes", "tokenizer", ""),
             ("decoder + reconstruction loss", decode, "yes", "tokenizer", ""),
             (f"flow pass (GE on registers) x K={cfg.flow.flow_batches}", flow, "yes", "", "denoiser"),
             ("frozen tokenizer forward (no gradient)", frozen_tokenize, "no", "", "denoiser"),
             ("optimiser + EMA update", optimiser, "yes", "tokenizer", "denoiser")]
    rows = []
    for name, fn, unite, tok, den in parts:
        fn()  # warm-up (and grads exist for the optimiser)
        sec = timed(fn, reps) * (cfg.flow.flow_batches if name.startswith("flow") else 1)
        m.zero_grad(set_to_none=False)
        rows.append({"modality": modality, "preset": preset, "part": name, "seconds": sec,
                     "share_of_unite_step_%": 100 * sec / step if unite == "yes" else None,
                     "in_unite_step": unite, "in_two_stage_phase": " + ".join(p for p in (tok, den) if p) or "-"})
    rows.append({"modality": modality, "preset": preset, "part": "UNITE step, measured whole", "seconds": step,
                 "share_of_unite_step_%": 100.0, "in_unite_step": "yes", "in_two_stage_phase": "-"})
    return rows
