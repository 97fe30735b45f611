"""Collapse checks: generated items that stopped varying, and a reconstruction that stopped improving.

A run can look healthy by its loss while it is useless: one image run drew 30 identical pictures while its
flow loss fell to 0.01 and its reconstruction loss stayed flat. Two checks catch this, on any modality:

- :func:`sample_spread` compares N generated items with N real ones, both as flat arrays in the same
  representation (an adapter chooses it: pixels, coordinates, latents). ``spread_ratio`` is the mean pairwise
  distance of the generated items over that of the real ones (about 1 for a healthy model, 0 when everything
  is one item); ``duplicate_share`` is the share of generated items whose nearest other generated item is
  closer than ``DUPLICATE_FRACTION`` of the real items' median nearest-neighbour distance (about 0 for real
  data, 1 when every item has a twin). An adapter's ``quick_metrics`` returns both under
  ``<modality>/spread_ratio`` and ``<modality>/duplicate_share``; :func:`collapse_warning` reads any metrics
  dict with those suffixes.
- :func:`reconstruction_stalled` reads logged training rows (``flow`` and ``rec`` losses): the flow loss
  fell by at least ``FLOW_DROP`` of its start while the reconstruction loss fell by less than ``REC_DROP``.
  Then the denoiser fits latents that the decoder does not use, and low flow loss means nothing.
- :func:`denoiser_blind` reads ``diagnose``'s one-shot latent errors: an x-prediction whose error does not fall
  as t -> 1 ignores its input x_t and predicts about the mean latent; samples decode that mean. Seen on crystals:
  one of two seeds of the shared GE at 15 CPU-minutes, error 1.60 at every t from 0.05 to 0.99 (its twin: 0.68
  at t = 0.3, 0.003 at t = 0.99), 0.6 % structurally valid samples.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

SPREAD_RATIO_MIN = 0.25      # generated items spread less than a quarter as much as real ones: collapsed
DUPLICATE_FRACTION = 0.1     # "a twin": nearer than a tenth of the real items' median nearest-neighbour distance
DUPLICATE_SHARE_MAX = 0.5    # more than half of the items have a twin: collapsed
FLOW_DROP = 0.5              # the flow loss fell to half its start or below ...
REC_DROP = 0.1               # ... while the reconstruction loss fell by less than a tenth of its start
START_ROWS = 3               # logged rows whose median is "the start"
END_FRACTION = 0.25          # the last quarter of the logged rows is "the end"
BLIND_RATIO = 0.5            # x1_hat's error near t = 1 at least half of its error at the earliest t: blind


def _flat(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(len(x), -1)  # (N, D)


def _pairwise(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) Euclidean distances with +inf on the diagonal."""
    d = torch.cdist(x, x)
    return d.fill_diagonal_(float("inf"))


def sample_spread(generated: Any, real: Any) -> dict[str, float]:
    """``spread_ratio`` and ``duplicate_share`` (module docstring) of generated items (N, ...) against real
    items (M, ...) in the same representation; the first ``min(N, M)`` of each are compared so that both sets
    have the same density. Empty when fewer than 2 of either."""
    n = min(len(generated), len(real))
    if n < 2:
        return {}
    g, r = _flat(generated)[:n], _flat(real)[:n]  # (n, D) each
    dg, dr = _pairwise(g), _pairwise(r)
    off = ~torch.eye(n, dtype=torch.bool)
    real_spread = float(dr[off].mean())
    ratio = float(dg[off].mean()) / real_spread if real_spread > 0 else float("nan")
    twin = DUPLICATE_FRACTION * float(dr.min(1).values.median())
    return {"spread_ratio": ratio, "duplicate_share": float((dg.min(1).values <= twin).double().mean())}


def collapse_warning(metrics: Mapping[str, Any], what: str = "generated samples") -> str | None:
    """One line naming the collapse that ``metrics`` (any dict with ``*spread_ratio`` / ``*duplicate_share``
    keys, e.g. ``quick_metrics``) shows, or None."""
    def find(suffix: str) -> float | None:
        vals = [float(v) for k, v in metrics.items() if k.endswith(suffix) and v is not None]
        return vals[0] if vals and math.isfinite(vals[0]) else None

    ratio, dup = find("spread_ratio"), find("duplicate_share")
    problems = []
    if ratio is not None and ratio < SPREAD_RATIO_MIN:
        problems.append(f"they spread {ratio:.2f} times as much as real items (below {SPREAD_RATIO_MIN:g})")
    if dup is not None and dup > DUPLICATE_SHARE_MAX:
        problems.append(f"{dup:.0%} of them have a near-identical twin (above {DUPLICATE_SHARE_MAX:.0%})")
    if not problems:
        return None
    return f"{what} collapsed: " + "; ".join(problems)


def reconstruction_stalled(rows: Iterable[Mapping[str, Any]], flow: str = "flow", rec: str = "rec") -> str | None:
    """One line when logged rows show the flow loss falling while the reconstruction loss stays flat, else
    None (also when fewer than ``4 * START_ROWS`` rows carry both losses)."""
    pairs = [(float(r[flow]), float(r[rec])) for r in rows
             if r.get(flow) is not None and r.get(rec) is not None
             and math.isfinite(float(r[flow])) and math.isfinite(float(r[rec]))]
    if len(pairs) < 4 * START_ROWS:
        return None
    arr = np.array(pairs)  # (R, 2): flow, rec
    start = np.median(arr[:START_ROWS], axis=0)
    end = np.median(arr[-max(1, int(len(arr) * END_FRACTION)):], axis=0)
    if not (start > 0).all():
        return None
    flow_drop, rec_drop = 1 - end / start
    if flow_drop >= FLOW_DROP and rec_drop < REC_DROP:
        return (f"reconstruction stalled while the flow loss fell: {flow} {start[0]:.4g} -> {end[0]:.4g} "
                f"({flow_drop:.0%} lower), {rec} {start[1]:.4g} -> {end[1]:.4g} ({rec_drop:.0%} lower); the "
                "denoiser fits latents the decoder does not use, so a low flow loss says nothing about samples")
    return None


def denoiser_blind(latent: Mapping[str, float]) -> str | None:
    """One line when the one-shot errors (``one_shot/t=T/mse_x1_hat`` and ``.../mse_x_t``, ``diagnose``) show
    a denoiser that does not read x_t: its error at the latest t is at least ``BLIND_RATIO`` of the error at
    the earliest and ten times that of x_t itself. None otherwise, or with fewer than two times."""
    times = sorted(float(k.split("/")[1][2:]) for k in latent if k.startswith("one_shot/") and k.endswith("x1_hat"))
    if len(times) < 2:
        return None
    first, last = (latent[f"one_shot/t={t:g}/mse_x1_hat"] for t in (times[0], times[-1]))
    own = latent.get(f"one_shot/t={times[-1]:g}/mse_x_t", 0.0)
    if first > 0 and last >= BLIND_RATIO * first and last > 10 * own:
        return (f"the denoiser does not read its input: its prediction's latent error is {first:.3g} at t = "
                f"{times[0]:g} and {last:.3g} at t = {times[-1]:g} (x_t itself: {own:.2g}), so every sample decodes "
                "about the mean latent; retrain with another seed, or with model.shared_weights=false")
    return None


def warn(message: str | None) -> None:
    """Print ``warning: <message>`` on stderr (nothing for None)."""
    if message:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def stalled_warning(metrics_jsonl: str | Path) -> str | None:
    """:func:`reconstruction_stalled` over a run's logged rows (``metrics.jsonl``), warned on stderr; returns
    the line (None when the run is fine or has too few rows)."""
    import json

    path = Path(metrics_jsonl)
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    message = reconstruction_stalled(rows)
    warn(message)
    return message
