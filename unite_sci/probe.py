"""Linear probe: how much of a property the pooled latents hold, against the same probe on a randomly
initialised network of the same architecture (how a user judges the latents as a representation).

Ridge regression on standardised pooled latents, closed form; the ridge strength is chosen on the
validation split from ``ALPHAS``; test MAE (in the property's unit) and R^2 are reported, with the MAE of
predicting the training mean as the floor. The adapter supplies the targets with ``property_values(split,
name)`` aligned with its splits' items.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .api import Model, load
from .errors import UserError

ALPHAS = tuple(10.0 ** k for k in range(-3, 4))


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Weights (D,) and bias minimising ``|x w + b - y|^2 + alpha |w|^2`` (the bias is not penalised)."""
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)


def fit_and_score(feats: dict[str, np.ndarray], ys: dict[str, np.ndarray]) -> dict[str, float]:
    """Standardise on train, pick alpha on val, score on test."""
    mu, sd = feats["train"].mean(0), feats["train"].std(0) + 1e-8
    x = {k: (v - mu) / sd for k, v in feats.items()}

    def val_mae(alpha: float) -> float:
        w, b = ridge(x["train"], ys["train"], alpha)
        return float(np.abs(x["val"] @ w + b - ys["val"]).mean())

    best = min(ALPHAS, key=val_mae)
    w, b = ridge(x["train"], ys["train"], best)
    pred, y = x["test"] @ w + b, ys["test"]
    r2 = 1.0 - ((pred - y) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    return {"mae": float(np.abs(pred - y).mean()), "r2": float(r2), "alpha": best}


def _features(m: Model, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    splits = m.adapter.build_splits()
    return {s: m.encode_items([splits[s][i] for i in range(min(n, len(splits[s])))], seed).pooled
            for s, n in counts.items()}


def run_probe(checkpoint: str, prop: str, num_train: int = 5000, num_val: int = 1000, num_test: int = 2000,
              seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """The probe on ``checkpoint``'s pooled latents and on a random network's, for property ``prop``."""
    if min(num_train, num_val, num_test) < 2:
        raise UserError("the probe needs at least 2 items in each of train, val and test")
    m = load(checkpoint, device)
    if not hasattr(m.adapter, "property_values"):
        raise UserError(f"the {m.adapter.name!r} adapter has no properties to probe (no property_values)")
    counts = {"train": num_train, "val": num_val, "test": num_test}
    t0 = time.time()
    ys = {s: np.asarray(m.adapter.property_values(s, prop), dtype=np.float64)[:n] for s, n in counts.items()}
    trained = fit_and_score(_features(m, counts, seed), ys)
    torch.manual_seed(seed)  # the same architecture, untrained
    from .unite import Unite

    fresh = Unite(m.adapter, m.cfg).to(m.device).eval()
    rnd = fit_and_score(_features(Model(replace(m.loaded, model=fresh)), counts, seed), ys)
    floor = float(np.abs(ys["test"] - ys["train"].mean()).mean())
    n = {s: len(y) for s, y in ys.items()}
    unit = getattr(m.adapter, "property_units", {}).get(prop, "")
    return {"property": prop, "unit": unit, "checkpoint": checkpoint, "train_steps": m.loaded.train_steps,
            "items": n, "trained": trained, "random_init": rnd, "mean_predictor_mae": floor,
            "wall_s": round(time.time() - t0, 1)}
