"""A QM9 property predictor for EDM's conditional-generation protocol (EDM used an EGNN; ours is smaller).

    pred = Predictor.load_or_train("gap", train_mols, values, cache)   # trained once, cached
    mae = np.abs(pred.predict(z_list, pos_list) - targets).mean()

Features are invariant to rotation, translation and atom order: element counts, the sorted eigenvalues of
the Coulomb matrix, and per element pair a Gaussian-smeared histogram of interatomic distances (a "bag of
distances"). An MLP on the standardised features is trained with a held-out tenth for early stopping.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unite_sci.files import atomic_write

ELEMENTS = (1, 6, 7, 8, 9)
PAIRS = [(a, b) for i, a in enumerate(ELEMENTS) for b in ELEMENTS[i:]]
CENTRES = np.linspace(0.8, 6.0, 27)  # Angstrom
WIDTH = 0.2
MAX_ATOMS = 29
FEATURE_VERSION = 2


def features(z: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """One molecule (atomic numbers (n,), Angstrom (n, 3)) -> invariant features (F,) float32."""
    z = np.asarray(z, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    n = len(z)
    counts = np.array([(z == e).sum() for e in ELEMENTS], dtype=np.float64)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)  # (n, n)
    with np.errstate(divide="ignore"):
        cm = np.where(d > 1e-8, np.outer(z, z) / np.maximum(d, 1e-8), 0.0)
    np.fill_diagonal(cm, 0.5 * z.astype(np.float64) ** 2.4)
    eig = np.zeros(MAX_ATOMS)
    if n:
        ev = np.sort(np.linalg.eigvalsh(cm))[::-1][:MAX_ATOMS]
        eig[:len(ev)] = ev
    iu = np.triu_indices(n, 1)
    za, zb, dist = z[iu[0]], z[iu[1]], d[iu]
    lo, hi = np.minimum(za, zb), np.maximum(za, zb)
    smear = np.exp(-((dist[:, None] - CENTRES[None]) / WIDTH) ** 2)  # (pairs, G)
    bags = np.zeros((len(PAIRS), len(CENTRES)))
    for k, (a, b) in enumerate(PAIRS):
        sel = (lo == a) & (hi == b)
        if sel.any():
            bags[k] = smear[sel].sum(0)
    return np.concatenate([counts, [n], np.sign(eig) * np.log1p(np.abs(eig)), bags.ravel()]).astype(np.float32)


def feature_matrix(zs, poss) -> np.ndarray:
    return np.stack([features(z, p) for z, p in zip(zs, poss)]) if len(zs) else np.zeros((0, 0), np.float32)


class Predictor:
    """Standardised features -> MLP -> property (in the units it was trained on)."""

    def __init__(self, net: nn.Module, stats: dict[str, np.ndarray]):
        self.net, self.stats = net.eval(), stats

    @staticmethod
    def build(num_features: int, hidden: int = 256) -> nn.Module:
        return nn.Sequential(nn.Linear(num_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                             nn.Linear(hidden, 1))

    @torch.no_grad()
    def predict_features(self, x: np.ndarray) -> np.ndarray:
        s = self.stats
        xs = torch.from_numpy((x - s["x_mean"]) / s["x_std"]).float()
        return self.net(xs).squeeze(-1).double().numpy() * float(s["y_std"]) + float(s["y_mean"])

    def predict(self, zs, poss) -> np.ndarray:
        return self.predict_features(feature_matrix(zs, poss))

    @classmethod
    def train(cls, x: np.ndarray, y: np.ndarray, *, epochs: int = 60, seed: int = 0, lr: float = 2e-3,
              batch: int = 256) -> tuple["Predictor", dict[str, float]]:
        """Fit on (x, y) with a seeded tenth held out; the weights of the best held-out epoch are kept."""
        rng = np.random.RandomState(seed)
        perm = rng.permutation(len(x))
        n_val = max(1, len(x) // 10)
        val, tr = perm[:n_val], perm[n_val:]
        stats = {"x_mean": x[tr].mean(0), "x_std": np.maximum(x[tr].std(0), 0.1),  # floor: a feature
                 "y_mean": np.float64(y[tr].mean()), "y_std": np.float64(y[tr].std() + 1e-12)}
        # (the floor: a feature constant in the training molecules, say a pair of elements they never
        # hold, must not blow up on a molecule that has it)
        xs = torch.from_numpy((x - stats["x_mean"]) / stats["x_std"]).float()
        ys = torch.from_numpy((y - stats["y_mean"]) / stats["y_std"]).float()
        torch.manual_seed(seed)
        net = cls.build(x.shape[1])
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * math.ceil(len(tr) / batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        best, best_state = float("inf"), None
        trt = torch.from_numpy(tr)
        for _ in range(epochs):
            net.train()
            for idx in trt[torch.randperm(len(trt))].split(batch):
                loss = nn.functional.smooth_l1_loss(net(xs[idx]).squeeze(-1), ys[idx], beta=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            net.eval()
            with torch.no_grad():
                mae = (net(xs[val]).squeeze(-1) - ys[val]).abs().mean().item() * float(stats["y_std"])
            if mae < best:
                best, best_state = mae, {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(best_state)
        return cls(net, stats), {"heldout_mae": best, "train_molecules": int(len(tr)), "epochs": epochs}

    def save(self, path: Path, info: dict) -> None:
        blob = {"state": self.net.state_dict(), "stats": {k: np.asarray(v) for k, v in self.stats.items()},
                "info": info, "version": FEATURE_VERSION}
        atomic_write(Path(path), lambda f: torch.save(blob, f), binary=True)

    @classmethod
    def load(cls, path: Path) -> tuple["Predictor", dict]:
        blob = torch.load(path, weights_only=False)
        if blob.get("version") != FEATURE_VERSION:
            raise ValueError("predictor cache of another feature version")
        net = cls.build(len(blob["stats"]["x_mean"]))
        net.load_state_dict(blob["state"])
        return cls(net, blob["stats"]), blob["info"]


def load_or_train(name: str, zs, poss, y: np.ndarray, cache_dir: Path, progress=print) -> tuple[Predictor, dict]:
    """The predictor of property ``name`` trained on these molecules, from ``cache_dir`` if trained before."""
    key = hashlib.sha256(np.asarray(y, dtype=np.float64).tobytes() + str(len(zs)).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"predictor_{name}_{key}_v{FEATURE_VERSION}.pt"
    if path.is_file():
        try:
            return Predictor.load(path)
        except (OSError, ValueError, RuntimeError, KeyError):
            pass
    progress(f"training the {name} predictor on {len(zs):,} molecules (once; cached in {path})")
    pred, info = Predictor.train(feature_matrix(zs, poss), np.asarray(y, dtype=np.float64))
    pred.save(path, info)
    return pred, info
