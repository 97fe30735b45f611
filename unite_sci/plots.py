"""Figures of a run folder, drawn from its ``metrics.jsonl``.

``loss.png``: the loss curves against step and, when the run sampled during training
(``train.sample_every``), a second panel with the adapter's quick generation metrics against step.
"""
from __future__ import annotations

import json
from pathlib import Path

SAMPLE_PREFIX = "sample/"  # metrics.jsonl keys written by the trainer's sampling hook
SAMPLE_COST_KEYS = ("sample/wall_s",)  # bookkeeping, not a quality metric: not plotted


def plot_losses(metrics: Path, out_png: Path) -> int:
    """Loss curves (total, reconstruction, flow) on a log scale; beside them, when present, the
    ``sample/*`` generation metrics against step. Returns the number of panels drawn (0: no rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics).read_text().splitlines() if ln.strip()]
    if not rows:
        return 0
    sample_keys = sorted({k for r in rows for k in r
                          if k.startswith(SAMPLE_PREFIX) and k not in SAMPLE_COST_KEYS})
    panels = 2 if sample_keys else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    for key in ("loss", "rec", "flow"):
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if sample_keys:
        ax = axes[0, 1]
        for key in sample_keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts), marker="o", markersize=3, label=key[len(SAMPLE_PREFIX):])
        ax.set_xlabel("step")
        ax.set_ylabel("metric")
        ax.set_title("samples from the EMA weights")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return panels
