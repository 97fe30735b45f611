"""One model for molecules and crystals against one model each, at the same total budget.

    unite-sci benchmark joint --budget-minutes 60 --num-samples 1000 [jobs=2] [recon=500]

Three training runs: the joint model (``--modality qm9+mp20``, ``configs/qm9+mp20.yaml``) for the whole
budget, and the QM9 and MP-20 models for half of it each, so both sides spend the same CPU minutes. With
``jobs=2`` (one thread per job) the joint model trains on one core while the two single models train one
after the other on the other. Each data set is then scored by its own full protocol: ``num`` molecules and
``num`` crystals from every model (the joint one given ``dataset=qm9`` or ``dataset=mp20``), and ``recon``
test items of each reconstructed. Finished runs are kept: rerunning the command trains only what is missing.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unite_sci.config import parse_options
from unite_sci.engine import generate, load_model, provenance, reconstruct_items
from unite_sci.errors import UserError
from unite_sci.files import write_json
from unite_sci.protocol import markdown_table, write_report
from unite_sci.schema import non_negative, ranged

from unite_sci_benchmarks.study import _launch, _trained

# per data set: the columns of its table, as (label, result key)
HEADLINE = {
    "qm9": [("connected_validity", "connected_validity"), ("edm/atom_stability", "edm/atom_stability"),
            ("edm/molecule_stability", "edm/molecule_stability"), ("adit/validity", "adit/validity"),
            ("adit/uniqueness", "adit/uniqueness"), ("match", "reconstruction/match_rate"),
            ("rmsd", "reconstruction/rmsd")],
    "mp20": [("valid", "valid_pct"), ("comp_valid", "comp_valid_pct"), ("struct_valid", "struct_valid_pct"),
             ("elements_per_crystal", "elements_per_crystal"), ("match", "match_rate_pct"),
             ("match_ungated", "match_rate_ungated_pct"), ("rmse", "rmse")],
}


@dataclass
class JointOptions:
    jobs: int = ranged(2, lo=1)
    threads: int = ranged(1, lo=1)
    recon: int = non_negative(500)


def _lookup(res: dict[str, Any], key: str) -> Any:
    for k, v in res.items():
        if k == key or k.endswith("/" + key):
            return v
    return None


def score(checkpoint: Path, part: int, num: int, recon: int, out: Path) -> dict[str, Any]:
    """One data set's generation and reconstruction metrics of a checkpoint (joint: that data set only)."""
    loaded = load_model(checkpoint)
    adapter, cfg = loaded.adapter, loaded.cfg
    joint = hasattr(adapter, "parts")
    judge = adapter.parts[part] if joint else adapter
    given = {"dataset": ("qm9", "mp20")[part]} if joint else None
    samples, info = generate(loaded.model, adapter, cfg.sample, num, given=given)
    out.mkdir(parents=True, exist_ok=True)
    judge.export(samples, out / "samples")
    gen = judge.evaluate(samples, str(out / "per_sample.csv"))
    test = adapter.build_splits()["test"]
    items = [test[i] for i in range(len(test)) if not joint or test[i][0] == part][:recon] if recon else []
    inputs, recons = reconstruct_items(loaded.model, adapter, items, progress=False) if items else ([], [])
    rec = judge.evaluate_reconstruction(inputs, recons) if items else {}
    res = {"generation": gen, "reconstruction": rec, "sampling": info, **loaded.checkpoint_info()}
    write_json(res, out / "results.json")
    return res


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, ds in zip(axes, ("qm9", "mp20")):
        labels = [lab for lab, _ in HEADLINE[ds] if lab not in ("rmsd", "rmse", "elements_per_crystal")]
        mine = [r for r in rows if r["data set"] == ds]
        width = 0.8 / max(1, len(mine))
        for j, r in enumerate(mine):
            vals = [float(r.get(lab) or 0) for lab in labels]
            ax.bar([i + j * width for i in range(len(labels))], vals, width, label=r["model"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("percent")
        ax.set_title({"qm9": "QM9 molecules", "mp20": "MP-20 crystals"}[ds])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, config = parse_options(JointOptions, overrides)
    if checkpoint:
        raise UserError("benchmark joint trains its three models; it takes no --checkpoint")
    if config:
        raise UserError("benchmark joint takes no config overrides (the three models use their own configs)")
    budget, num = budget_minutes or 60.0, num_samples or 1000
    out_p = Path(out)
    runs = {"joint": ("qm9+mp20", budget), "qm9": ("qm9", budget / 2), "mp20": ("mp20", budget / 2)}
    pending = [name for name, (_, b) in runs.items() if not _trained(out_p / name, b)]
    running = []
    while pending or running:
        while pending and len(running) < opts.jobs:
            name = pending.pop(0)
            modality, b = runs[name]
            job = {"tag": name, "run": str(out_p / name), "budget": b, "num": 20, "recon": 0, "source": None,
                   "threads": opts.threads, "overrides": [f"train.threads={opts.threads}", "train.seed=0"]}
            print(f"[joint] start {name} ({b:g} min)", flush=True)
            running.append((name, _launch(modality, job, opts.threads)))
        time.sleep(2)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                if proc.returncode != 0:
                    raise UserError(f"training {name} failed (rc {proc.returncode}; its messages are above)")
    rows, results = [], {}
    for part, ds in enumerate(("qm9", "mp20")):
        for name in ("joint", ds):
            res = score(out_p / name / "checkpoints" / "last.pt", part, num, opts.recon, out_p / "eval" / f"{name}_{ds}")
            results[f"{name}/{ds}"] = res
            flat = {**res["generation"], **res["reconstruction"]}
            rows.append({"data set": ds, "model": ("joint qm9+mp20" if name == "joint" else f"{ds} alone") +
                         f" ({runs[name][1]:g} min, {res['train_steps']} steps)",
                         **{lab: _lookup(flat, key) for lab, key in HEADLINE[ds]}})
    png = plot(rows, out_p / "joint.png")
    sections = [(f"{ds.upper()} (percent; RMSD in Angstrom, RMSE in (V/N)^(1/3) units)",
                 markdown_table([r for r in rows if r["data set"] == ds], ["model"] + [lab for lab, _ in HEADLINE[ds]]))
                for ds in ("qm9", "mp20")]
    settings = (f"- Budget: {budget:g} minutes for the joint model, {budget / 2:g} for each single model; "
                f"{opts.jobs} job(s) at a time, {opts.threads} thread(s) each\n"
                f"- {num} samples per model and data set; reconstruction of {opts.recon} test items per data set\n"
                f"- Plot: {png.name}")
    return write_report(out, "unite-sci benchmark: joint", sections + [("Settings", settings), ("About", __doc__)],
                        {"rows": rows, "results": json.loads(json.dumps(results, default=str)), **provenance()})

