"""``make demo``: the shipped QM9 model shows the quality, a short training run shows that training works.

    unite-sci benchmark qm9-demo --budget-minutes 3 --num-samples 500 --out runs/demo [train_samples=200]

1. Quality, from the shipped model ``qm9`` (docs/models.md; its sha256 checked against its card): ``num``
   samples scored by the QM9 benchmark at the model's sampling temperature and at temperature 1, ``num`` real
   test molecules beside them, pictures and report in ``OUT/shipped/``.
2. Training, on this machine: a fresh QM9 run of ``--budget-minutes``, scored the same way on
   ``train_samples`` samples in ``OUT/trained/``.

Without a shipped QM9 model the demo says so in one line and scores the training run on ``num`` samples
instead. ``OUT/report.md`` puts the rows together, each naming where its numbers come from, with the card's
own numbers (measured on more samples by the command the card names) beside them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unite_sci.config import parse_options
from unite_sci.protocol import markdown_table, write_report
from unite_sci.schema import positive
from unite_sci.shipped import read_card, resolve, shipped_models

from unite_sci_benchmarks import qm9 as bench

MODEL = "qm9"


@dataclass
class DemoOptions:
    """``key=value`` words of the demo (dotted words are run-config overrides of the training run)."""

    train_samples: int = positive(200)  # samples scored from the training run when the shipped model is there
    model: str = MODEL                  # the shipped model of the quality part


def card_row(card: dict[str, Any]) -> dict[str, Any]:
    """The card's measured numbers as a row of the QM9 table."""
    s = card["scores"]
    rec = s.get("reconstruction", {})
    return {"method": f"Card of shipped '{card['name']}': {s['num_samples']} samples, temperature "
                      f"{s['temperature']:g} (`{s['command']}`)",
            "match": rec.get("reconstruction/match_rate"), "rmsd": rec.get("reconstruction/rmsd"),
            **s["generation"]}


def _rows(report_dir: Path, prefix: str) -> list[dict[str, Any]]:
    """The benchmark's rows, each method named after where it comes from."""
    rows = json.loads((report_dir / "report.json").read_text())["rows"]
    return [{**r, "method": f"{prefix}: {r['method']}"} for r in rows if not r["method"].startswith(
        tuple(bench.REFERENCES))]


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, config = parse_options(DemoOptions, overrides)
    budget, num = budget_minutes or 3.0, num_samples or 500
    out_p = Path(out)
    rows: list[dict[str, Any]] = []
    where: list[str] = []
    shipped = shipped_models().get(opts.model) if checkpoint is None else None
    if shipped is None and checkpoint is None:
        print(f"no shipped model {opts.model!r} in this install (see docs/models.md): the quality part uses the "
              f"{budget:g}-minute training run instead")
    quality = checkpoint or (str(resolve(opts.model)) if shipped is not None else None)
    if quality is not None:
        card = read_card(quality) if shipped is not None else None
        bench.run(str(out_p / "shipped"), num_samples=num, checkpoint=quality,
                  overrides=[f"sanity={num}"] + [c for c in config if c.startswith(("sample.", "data."))])
        t = (card or {}).get("training", {})
        label = (f"Shipped '{opts.model}' ({t.get('steps')} steps, {t.get('cpu_hours')} CPU-h)" if card
                 else f"Given checkpoint {quality}")
        rows += _rows(out_p / "shipped", label)
        if card and card.get("scores"):
            rows.append(card_row(card))
        where.append(f"- Rows starting '{label}': sampled and scored now from that model, {num} samples "
                     f"(`{out_p / 'shipped'}/report.md`); the real-data row: {num} QM9 test molecules.")
    trained_num = opts.train_samples if quality is not None else num
    bench.run(str(out_p / "trained"), budget_minutes=budget, num_samples=trained_num,
              overrides=["baseline=false", f"sanity={0 if quality is not None else num}"] + list(config))
    label = f"This demo's {budget:g}-minute training run"
    rows += _rows(out_p / "trained", label)
    where.append(f"- Rows starting '{label}': a fresh model trained here for {budget:g} minutes, "
                 f"{trained_num} samples (`{out_p / 'trained'}/report.md`): it shows that training works, not "
                 "what a trained model does.")
    pictures = sorted(str(p) for p in out_p.glob("*/unite/**/*.png"))
    sections = [("Where the numbers come from", "\n".join(where)),
                ("Results (percent; RMSD in Angstrom)", markdown_table(rows, bench.COLUMNS)),
                ("Pictures", "\n".join(f"- {p}" for p in pictures) or "none"),
                ("Protocol", bench.PROTOCOL)]
    return write_report(out, "unite-sci demo: QM9", sections, {"rows": rows, "where": where})
