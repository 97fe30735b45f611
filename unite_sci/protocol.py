"""The benchmark protocol shared by every modality: train (or load), sample, evaluate, report.

Modality benchmarks in ``benchmarks/`` call :func:`run_protocol` and add the published numbers; the
scores are computed from samples saved on disk, so they can be recomputed without sampling again.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .engine import generate, load_config, load_model, provenance, reconstruct, train
from .config import to_yaml
from .files import write_json, write_text


def run_protocol(modality: str, out: str | Path, budget_minutes: float | None = None,
                 num_samples: int | None = None, checkpoint: str | None = None,
                 overrides: list[str] = (), recon_num: int = 1000, resume: bool = False) -> dict[str, Any]:
    """Train for the budget (or load ``checkpoint``), sample, evaluate generation and reconstruction.

    With ``sample.temperature`` below 1 the samples at temperature 1 (the model's own distribution) are
    scored too, as ``generation_temperature_1``: a lowered temperature is never reported alone. Each of
    ``sample.beside_temperatures`` is scored as ``generation_temperature_<T>`` beside the headline."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_summary: dict[str, Any] = {}
    post = [o for o in overrides if o.startswith(("sample.", "data."))]
    if checkpoint is None:
        extra = [f"out={out / 'train'}"]
        if budget_minutes is not None:
            extra += [f"train.budget_minutes={budget_minutes}", "train.max_steps=0"]
        cfg = load_config(modality, overrides=list(overrides) + extra)
        train_summary = train(cfg, resume=resume)
        checkpoint = train_summary["checkpoint"]
    loaded = load_model(checkpoint, overrides=post)
    model, adapter, cfg = loaded.model, loaded.adapter, loaded.cfg
    num = num_samples or cfg.sample.num
    samples, sample_info = generate(model, adapter, cfg.sample, num)
    files = adapter.export(samples, out / "samples")
    t0 = time.time()
    gen = adapter.evaluate(samples, str(out / "per_sample.csv"))
    gen_wall = time.time() - t0
    at_one = {}
    for temp in beside_temperatures(cfg.sample):
        samples_t, _ = generate(model, adapter, replace(cfg.sample, temperature=temp), num)
        at_one[f"generation_temperature_{temp:g}"] = adapter.evaluate(
            samples_t, str(out / f"per_sample_temperature_{temp:g}.csv"))
    inputs, recons = reconstruct(model, adapter, "test", recon_num)
    t0 = time.time()
    rec = adapter.evaluate_reconstruction(inputs, recons)
    rec_wall = time.time() - t0
    result = {"modality": modality, "generation": gen, **at_one, "reconstruction": rec,
              "reconstruction_num": len(inputs), "sampling": sample_info, "training": train_summary,
              "evaluation_wall_s": {"generation": round(gen_wall, 1), "reconstruction": round(rec_wall, 1)},
              "sample_files": [str(f) for f in files], **provenance(loaded), "config": to_yaml(cfg)}
    write_json(result, out / "results.json")
    return result


def beside_temperatures(s: Any) -> list[float]:
    """Temperatures scored beside the headline ``s.temperature``: 1 (the model's own distribution) whenever
    the headline is lowered, then ``s.beside_temperatures``, each once."""
    temps = ([1.0] if s.temperature != 1.0 else []) + [float(t) for t in s.beside_temperatures]
    return [t for i, t in enumerate(temps) if t != s.temperature and t not in temps[:i]]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.4f}"
    return "–" if v is None else str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |\n" for r in rows)


def write_report(out: str | Path, title: str, sections: list[tuple[str, str]], data: dict[str, Any]) -> Path:
    """``report.md`` (title + sections of markdown) and ``report.json`` (all numbers and settings)."""
    out = Path(out)
    text = f"# {title}\n\n" + "".join(f"## {h}\n\n{body.strip()}\n\n" for h, body in sections)
    write_json(data, out / "report.json")
    return write_text(text, out / "report.md")


def training_speed(checkpoint: str) -> float | None:
    """Mean logged training samples/s of the run that wrote ``checkpoint`` (its metrics.jsonl)."""
    path = Path(checkpoint).resolve().parent.parent / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    rates = rates[1:] or rates  # the first logged rate holds warm-up
    return round(sum(rates) / len(rates), 1) if rates else None


def load_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
