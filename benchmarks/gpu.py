"""GPU benchmark: one prepared command for one CUDA GPU (H200 class) that finishes in about 8 minutes.

    unite-sci benchmark gpu [--out DIR] [presets=S,B] [modalities=qm9,mp20] [compile=false,true] [steps=10]
                            [train_preset=S] [train_minutes=4] [num_samples=1000] [recon=1000] [minutes=8]
    unite-sci benchmark gpu device=cpu presets=tiny train_preset=tiny batch=8 steps=1 train_minutes=0.05 \\
        num_samples=8 recon=8 data.num_train=64 data.num_test=16     # a CPU dry run of the same code

Sections, in bf16 with the paper's presets and batch sizes unless options say otherwise:
1. Matmul reference: the sustained fp32, TF32 and bf16 rates of an n x n x n GEMM (n = 8192 on a GPU).
2. Training step per modality, preset and compile setting, on one fixed batch: samples/s, model-FLOP
   utilisation against the measured bf16 rate (FLOPs counted on the eager model, as ``benchmark speed``
   does), peak GPU memory of the timed steps. ``compile=true`` compiles for that batch's fixed shapes.
3. A QM9 training run of ``train_minutes`` with the paper's recipe (preset S, batch 512, lr 1e-4), then
   ``num_samples`` samples and ``recon`` reconstructions scored with the full QM9 metric set by the protocol
   of ``benchmark qm9`` (:func:`unite_sci.protocol.run_protocol`).
4. Extrapolation: how long the paper's 8,000-epoch QM9 schedule would take on this GPU at the measured rates.

Time plan (``minutes``, 8 by default): the matmuls and the eager steps first (about a minute), then the
training run (``train_minutes`` plus sampling and scoring), then the compiled steps, each only while the plan
has room for it (a compile takes a minute or more); a skipped one is listed with the reason. The report is
rewritten after every section, so a run stopped early keeps what it measured.

Dotted overrides go to every run, a ``data.*`` key only to the modalities whose data config has it.
"""
from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from unite_sci.adapter import get_adapter_class
from unite_sci.config import parse_options
from unite_sci.engine import load_config, machine_description, make_adapter
from unite_sci.errors import ConfigError, UserError
from unite_sci.protocol import markdown_table, run_protocol, training_speed, write_report
from unite_sci.schema import positive, ranged
from unite_sci.trainer import resolve_device

from unite_sci_benchmarks.published import QM9 as REFERENCES
from unite_sci_benchmarks.qm9 import COLUMNS as QM9_COLUMNS
from unite_sci_benchmarks.qm9 import result_row
from unite_sci_benchmarks.speed import matmul_flops, measure_preset

# The paper's recipe (UNITE paper, appendix C): UNITE-S, batch 512 on QM9 and on MP-20, AdamW at lr 1e-4,
# 8,000 epochs of QM9; mixed precision bf16 (Table 8).
PAPER_BATCH = {"qm9": 512, "mp20": 512}
PAPER_LR = 1e-4
PAPER_QM9_EPOCHS = 8000
COMPILE_GUESS_S = 90.0  # the plan's guess for a compiled measurement until one has been timed
STEP_COLUMNS = ["modality", "preset", "compiled", "batch", "params_M", "samples_per_s", "step_s",
                "achieved_TFLOPs", "mfu_%", "peak_gpu_MB", "padding_share", "wall_s"]


@dataclass
class GPUOptions:
    """This benchmark's ``key=value`` words without a dot (see the module docstring)."""

    presets: list[str] = field(default_factory=lambda: ["S", "B"])
    modalities: list[str] = field(default_factory=lambda: ["qm9", "mp20"])
    compile: list[bool] = field(default_factory=lambda: [False, True])
    batch: Optional[int] = ranged(None, lo=1)      # None: the paper's batch of each modality
    steps: int = ranged(10, lo=1)                  # timed training steps per measurement
    matmul_n: Optional[int] = ranged(None, lo=16)  # None: 8192 on a GPU, 1024 on a CPU
    matmul_seconds: float = positive(2.0)          # per precision
    train_preset: str = "S"
    train_minutes: float = positive(4.0)           # --budget-minutes, when given, wins
    num_samples: int = ranged(1000, lo=1)          # --num-samples, when given, wins
    recon: int = ranged(1000, lo=1)                # test molecules reconstructed
    minutes: float = positive(8.0)                 # the time plan: compiled steps run only while it has room
    device: str = "auto"                           # auto: the CUDA GPU, refused without one | cpu: dry run | cuda:N


def pick_device(name: str) -> torch.device:
    if name == "auto" and not torch.cuda.is_available():
        raise UserError("benchmark gpu needs a CUDA GPU and torch sees none; for a dry run of the same code on "
                        "the CPU add device=cpu with small settings (presets=tiny train_preset=tiny batch=8 "
                        "steps=1 train_minutes=0.05 num_samples=8 recon=8 data.num_train=64)")
    return resolve_device(name)


def for_modality(modality: str, words: list[str]) -> list[str]:
    """``words`` less the ``data.*`` overrides whose key ``modality``'s data config does not have."""
    known = {f.name for f in dataclasses.fields(get_adapter_class(modality).config_class)}
    return [w for w in words if not w.startswith("data.") or w.split("=", 1)[0].split(".")[1] in known]


def matmul_rates(n: int, seconds: float, device: torch.device) -> dict[str, float]:
    """Sustained FLOP/s of an n x n x n GEMM: fp32 (full precision), TF32 (CUDA only) and bf16."""
    before = torch.get_float32_matmul_precision()
    kinds = [("fp32", torch.float32, "highest"), ("tf32", torch.float32, "high"), ("bf16", torch.bfloat16, "highest")]
    rates = {}
    try:
        for name, dtype, fp32_precision in kinds:
            if name == "tf32" and device.type != "cuda":
                continue  # a CPU has no TF32
            torch.set_float32_matmul_precision(fp32_precision)
            rates[name] = matmul_flops(n, dtype, seconds, str(device))
    finally:
        torch.set_float32_matmul_precision(before)
    return rates


def step_row(modality: str, preset: str, batch: int, steps: int, compiled: bool, words: list[str],
             bf16_flops: float) -> dict[str, Any]:
    """One training step in bf16 (``benchmark speed``'s :func:`measure_preset`), with its MFU; the model
    is freed before the next one, so that every peak memory is its own."""
    t0 = time.perf_counter()
    r = measure_preset(modality, preset, batch, steps, "bf16", [*words, f"train.compile={str(compiled).lower()}"],
                       static_shapes=True)
    row = {"modality": modality, **{k: r[k] for k in ("preset", "compiled", "batch", "params_M", "samples_per_s",
                                                      "step_s", "flops_per_step", "padding_share", "peak_gpu_MB")}}
    del r
    if compiled:
        torch._dynamo.reset()  # drop the compiled graphs with their model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    achieved = row["flops_per_step"] / row["step_s"]
    row.update({"achieved_TFLOPs": achieved / 1e12, "mfu_%": 100 * achieved / bf16_flops,
                "wall_s": time.perf_counter() - t0})
    return row


def extrapolation(res: dict[str, Any], batch: int, train_size: int, preset: str,
                  steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hours of the paper's 8,000 QM9 epochs at each measured rate of ``preset``: the training run's own
    (everything included, and its logged training-only rate) and the fixed-batch steps of section 2."""
    tr = res["training"]
    rates = {"training run: steps x batch / wall (hooks, checkpoints, data loading included)":
             tr["steps"] * batch / tr["elapsed_s"],
             "training run: logged rate (training steps only)": training_speed(tr["checkpoint"])}
    for r in steps:
        if r["modality"] == "qm9" and r["preset"] == preset:
            rates[f"one fixed batch {r['batch']}, {'compiled' if r['compiled'] else 'eager'} (section 2)"] = \
                r["samples_per_s"]
    samples = train_size * PAPER_QM9_EPOCHS
    return [{"rate from": k, "samples_per_s": v, "epoch_s": train_size / v, "hours": samples / v / 3600,
             "days": samples / v / 86400} for k, v in rates.items() if v]


def report(out: str, data: dict[str, Any]) -> Path:
    """``report.md`` / ``report.json`` of the sections measured so far."""
    o = data["options"]
    sections = [("Machine", "\n".join(f"- {k}: {v}" for k, v in {**data["machine"], "device": data["device"]}.items()))]
    if "matmul_flops" in data:
        sections.append(("1. Matmul reference", "".join(
            f"- {p}: {v / 1e12:.4g} TFLOP/s ({data['matmul_n']}^3 GEMM, {o['matmul_seconds']} s, synchronised)\n"
            for p, v in data["matmul_flops"].items())))
    if data.get("steps") or data.get("skipped"):
        skipped = "".join(f"- skipped: {s['modality']} {s['preset']} compiled: {s['reason']}\n"
                          for s in data["skipped"])
        sections.append((f"2. Training step, bf16, one fixed batch, {o['steps']} timed steps", markdown_table(
            data["steps"], STEP_COLUMNS) + "\nMFU = FLOPs of the eager model's forward + backward (FlopCounterMode) "
            "per step time, over the measured bf16 GEMM rate. Compiled: `torch.compile` for the batch's fixed "
            "shapes. Peak GPU memory: `torch.cuda.max_memory_allocated` over the warm-up and timed steps "
            "(weights, gradients, optimiser and EMA state, activations).\n" + skipped))
    if "qm9_run" in data:
        res, run = data["qm9_run"], data["qm9_run"]["training"]
        s = res["sampling"]
        settings = (f"- Recipe: preset {o['train_preset']}, batch {data['qm9_batch']}, lr {PAPER_LR}, bf16, "
                    f"{data['train_minutes']} minutes: {run['steps']} steps in {run['elapsed_s']:.0f} s on "
                    f"{run['device']}\n- Samples: {s['num_samples']}, {s['solver']} {s['steps']} steps, "
                    f"{s['samples_per_s']} molecules/s; reconstruction of {res['reconstruction_num']} test molecules\n"
                    "- Scoring wall time: " + ", ".join(f"{k} {v} s" for k, v in res["evaluation_wall_s"].items())
                    + "\n")
        sections.append(("3. QM9 training run, then sampling and the full QM9 metric set (percent; RMSD in "
                         "Angstrom)", settings + "\n" + markdown_table(data["qm9_table"], QM9_COLUMNS)))
    if "extrapolation" in data:
        sections.append((f"4. Extrapolation: the paper's {PAPER_QM9_EPOCHS:,}-epoch QM9 schedule on this device",
                         f"An extrapolation, not a measurement: {data['qm9_train_size']:,} training molecules x "
                         f"{PAPER_QM9_EPOCHS:,} epochs at each measured rate of preset {o['train_preset']}.\n\n"
                         + markdown_table(data["extrapolation"],
                                          ["rate from", "samples_per_s", "epoch_s", "hours", "days"])))
    sections.append(("Wall time per section", markdown_table(
        [{"section": k, "seconds": v} for k, v in data["section_wall_s"].items()], ["section", "seconds"])
        + f"\nTime plan: {o['minutes']} minutes.\n"))
    title = "unite-sci benchmark: gpu" + (" (CPU dry run)" if data["device"] == "cpu" else "")
    return write_report(out, title, sections, data)


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, config = parse_options(GPUOptions, overrides)
    if checkpoint:
        raise UserError("benchmark gpu trains its own model; it takes no --checkpoint")
    device = pick_device(opts.device)
    minutes, num = budget_minutes or opts.train_minutes, num_samples or opts.num_samples
    words = {m: [f"train.device={device}", *for_modality(m, config)] for m in {*opts.modalities, "qm9"}}
    unknown = [w for w in config if w.startswith("data.") and not any(w in v for v in words.values())]
    if unknown:
        raise ConfigError(f"config key {unknown[0].split('=')[0]!r}: no data config of "
                          f"{', '.join(sorted(words))} has it")
    if opts.batch is None and not set(words) <= set(PAPER_BATCH):
        raise UserError(f"modality {sorted(set(words) - set(PAPER_BATCH))[0]!r} has no batch size in the paper; "
                        "give batch=")
    batch = {m: opts.batch or PAPER_BATCH[m] for m in words}
    for m in words:  # every config builds before any work: a typo costs no GPU minutes
        for p in {*opts.presets, opts.train_preset}:
            load_config(m, overrides=[f"model.preset={p}", *words[m]])
    start = time.perf_counter()
    data: dict[str, Any] = {"machine": machine_description(), "device": str(device),
                            "options": dataclasses.asdict(opts), "overrides": config, "section_wall_s": {}}

    def done(section: str, t0: float) -> None:
        walls = data["section_wall_s"]
        walls.pop("total", None)  # kept the last row
        walls[section] = time.perf_counter() - t0
        walls["total"] = time.perf_counter() - start
        report(out, data)

    t0 = time.perf_counter()
    data["matmul_n"] = opts.matmul_n or (8192 if device.type == "cuda" else 1024)
    data["matmul_flops"] = matmul_rates(data["matmul_n"], opts.matmul_seconds, device)
    done("1. matmul reference", t0)

    pairs = [(p, m) for p in opts.presets for m in opts.modalities]
    data["steps"], data["skipped"] = [], []
    t0 = time.perf_counter()
    if False in opts.compile:
        data["steps"] += [step_row(m, p, batch[m], opts.steps, False, words[m], data["matmul_flops"]["bf16"])
                          for p, m in pairs]
        done("2. training steps, eager", t0)

    t0 = time.perf_counter()
    res = run_protocol("qm9", Path(out) / "qm9_run", minutes, num, None,
                       [f"model.preset={opts.train_preset}", f"train.batch_size={batch['qm9']}", f"optim.lr={PAPER_LR}",
                        "train.precision=bf16", *words["qm9"]], opts.recon)
    data.update(qm9_run=res, qm9_batch=batch["qm9"], train_minutes=minutes, qm9_table=[
        result_row(f"UNITE-{opts.train_preset} (this run, {minutes} min)", res),
        {"method": "UNITE-S (paper, 8,000 epochs)", **REFERENCES["UNITE-S (paper)"]}])
    done("3. QM9 training run, sampling, scoring", t0)

    if True in opts.compile:  # last: the time plan decides how many compiles fit
        t0 = time.perf_counter()
        for p, m in pairs:
            left = 60 * opts.minutes - (time.perf_counter() - start)
            guess = max([r["wall_s"] for r in data["steps"] if r["compiled"]], default=COMPILE_GUESS_S)
            if guess > left:
                data["skipped"].append({"modality": m, "preset": p, "reason": f"{max(left, 0):.0f} s left of the "
                                        f"{opts.minutes}-minute plan, a compiled measurement takes ~{guess:.0f} s"})
                continue
            data["steps"].append(step_row(m, p, batch[m], opts.steps, True, words[m], data["matmul_flops"]["bf16"]))
        done("2. training steps, compiled", t0)

    t0 = time.perf_counter()
    data["qm9_train_size"] = len(make_adapter(load_config("qm9", overrides=words["qm9"])).build_splits()["train"])
    data["extrapolation"] = extrapolation(res, batch["qm9"], data["qm9_train_size"], opts.train_preset, data["steps"])
    done("4. extrapolation", t0)
    return Path(out) / "report.md"
