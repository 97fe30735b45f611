"""Trends of a study over several training budgets: each metric against compute (a picture) and the gap
between two rows at the smallest and the largest budget (a table), from a study's report or job folders.
Used by ``qm9-scaling`` and by ``images-ablation`` / ``qm9-paper-ablation`` with ``minutes=3,12,48``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unite_sci.protocol import fmt

from unite_sci_benchmarks.study import METRICS, _row


def plot_scaling(report_json: Path, out_png: Path) -> None:
    """QM9's scaling curve: :func:`plot_budgets` of connected validity and the EDM stabilities."""
    plot_budgets(report_json, out_png, ["connected_validity", "edm/atom_stability", "edm/molecule_stability"])


def _budget_of(tag: str, method: str, minutes: dict[str, Any]) -> float:
    """A job's budget: tags carry "_<N>min" only when the study has several budgets, else the row's."""
    last = tag.rsplit("_", 1)[1]
    return float(last[:-3]) if last.endswith("min") else float(minutes[method])


def per_budget(data: dict[str, Any], method: str, key: str) -> list[tuple[float, list[float]]]:
    """(budget, the seeds' values of ``key``) of ``method``'s finished jobs in a report, by budget."""
    minutes = {r["candidate"]: r.get("minutes") for r in data["rows"]}
    pts: dict[float, list[float]] = {}
    for tag, row in data["per_job"].items():
        if tag.startswith(method + "_s") and tag[len(method) + 2:].split("_")[0].isdigit() \
                and isinstance(row.get(key), (int, float)):
            pts.setdefault(_budget_of(tag, method, minutes), []).append(float(row[key]))
    return sorted(pts.items())


def plot_budgets(report_json: Path, out_png: Path, keys: list[str]) -> None:
    """Each metric against training minutes (log scale), one line per method through the seeds' mean, the
    band spanning their range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(report_json.read_text())
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method in sorted({r["candidate"] for r in data["rows"]}):
            pts = per_budget(data, method, key)
            if pts:
                xs = [x for x, _ in pts]
                line = ax.plot(xs, [sum(v) / len(v) for _, v in pts], marker="o", label=method)[0]
                ax.fill_between(xs, [min(v) for _, v in pts], [max(v) for _, v in pts], alpha=0.2,
                                color=line.get_color())
        ax.set_xscale("log")
        budgets = sorted({x for m in {r["candidate"] for r in data["rows"]} for x, _ in per_budget(data, m, key)})
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.minorticks_off()
        if key.startswith("fd"):  # a distance falling over decades: equal ratios at equal heights
            ax.set_yscale("log")
        ax.set_xlabel("training minutes (the study's budget)")
        ax.set_title(key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def gap_rows(data: dict[str, Any], pairs: list[tuple[str, str]], keys: list[str]) -> list[dict[str, str]]:
    """Per (pair, metric) with finished jobs at two budgets or more: at each budget the gap (mean of the
    first row minus the second's) and whether the seed ranges separate there; the ratio of the largest
    budget's gap to the smallest's (|ratio| < 1: the difference shrinks) and the ratio of the two rows' means
    at the smallest and the largest budget (the relative gap: both rows may improve while one stays behind)."""
    out = []
    for a, b in pairs:
        for key in keys:
            va, vb = dict(per_budget(data, a, key)), dict(per_budget(data, b, key))
            both = sorted(set(va) & set(vb))
            if len(both) < 2:
                continue
            row, gaps, rel = {"pair": f"{a} - {b}", "metric": key}, [], []
            for m in both:
                ma, mb = sum(va[m]) / len(va[m]), sum(vb[m]) / len(vb[m])
                apart = min(va[m]) > max(vb[m]) or max(va[m]) < min(vb[m])
                seeds = min(len(va[m]), len(vb[m]))
                why = "one seed" if seeds < 2 else "ranges apart" if apart else "ranges overlap"
                row[f"gap at {m:g} min"] = f"{fmt(ma - mb)} ({why})"
                gaps.append(ma - mb)
                rel.append(ma / mb if mb else float("nan"))
            row["gap ratio (largest / smallest)"] = fmt(gaps[-1] / gaps[0] if gaps[0] else float("nan"))
            row["means' ratio, smallest -> largest"] = f"{fmt(rel[0])} -> {fmt(rel[-1])}"
            out.append(row)
    return out


def gap_section(out: str, modality: str, budgets: list[float],
                pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The report section of :func:`gap_rows` from the finished jobs under ``out`` (every metric column)."""
    metrics = METRICS.get(modality) or {}
    per_job = {}
    for path in sorted(Path(out).glob("*/eval/results.json")):
        per_job[path.parent.parent.name] = _row(json.loads(path.read_text()), metrics)
    names = {tag.rsplit("_s", 1)[0] for tag in per_job}
    data = {"rows": [{"candidate": n, "minutes": budgets[0]} for n in names], "per_job": per_job}
    rows = gap_rows(data, pairs, [k for k in metrics if k != "train_steps"])
    if not rows:
        return []
    cols = list(dict.fromkeys(c for r in rows for c in r))
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "".join(
        "| " + " | ".join(r.get(c, "–") for c in cols) + " |\n" for r in rows)
    return [("The gap against training compute", table + "\nGap ratio below 1 in size: the difference shrinks with "
             "compute; the means' ratio says whether it shrinks relative to the metric itself. A gap whose seed "
             "ranges overlap at a budget is no difference there.")]
