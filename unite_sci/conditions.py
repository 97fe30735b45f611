"""Conditions beyond a class label: scalar properties and token sets, with classifier-free guidance.

An adapter declares what it can be conditioned on with ``condition_specs()`` and puts the values in
``Batch.conds``; the core embeds them, drops them for guidance training and doubles them with their null
for guided sampling, without knowing what they mean::

    specs = [ConditionSpec("gap", "scalar"), ConditionSpec("alpha", "scalar")]
    batch.conds = {"scalars": (B, 2) float}            # normalised by the adapter; NaN = not given
    specs = [ConditionSpec("composition", "tokens")]
    batch.conds = {"composition": (B, M) long}          # ids >= 0; -1 = padding / not given

Scalars enter the time/class vector ``c`` (one embedding per property, linear or Fourier features
(``model.scalar_embedding``), a learned null vector where the value is absent, summed, then an MLP). Each
scalar is dropped independently in training with probability ``flow.label_dropout``. A token set joins the
denoiser's sequence (``aligned``: token j belongs to element j and shares its register position, as input
tokens do in tokenize mode; otherwise the tokens sit at one shared position, a set) and its mean embedding
enters ``c``; it is dropped as a whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import UserError

SCALARS = "scalars"  # the key of the (B, P) scalar tensor in Batch.conds
KINDS = ("scalar", "tokens")
RANGE_MARGIN = 0.1  # a given scalar may lie this share of the training range's width beyond either end


def scalar_value(name: str, value: Any, train_range: tuple[float, float], unit: str = "") -> float:
    """A user's value for scalar condition ``name`` as a float, in the training data's units.

    UserError (one line, naming the training range) for a non-number, NaN or infinity, or a value more
    than ``RANGE_MARGIN`` of the range's width beyond the values the model was trained on: a network
    conditioned far outside its data returns noise, not an extrapolation."""
    u = f" {unit}" if unit else ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number{f' ({unit})' if unit else ''}, got {value!r}") from None
    lo, hi = float(train_range[0]), float(train_range[1])
    pad = RANGE_MARGIN * (hi - lo)
    if not math.isfinite(x) or not lo - pad <= x <= hi + pad:
        raise UserError(f"{name}={value} is outside the range this model was trained on: {lo:.6g} to {hi:.6g}{u} "
                        f"(values up to {RANGE_MARGIN:.0%} of its width beyond it are accepted)")
    return x


@dataclass(frozen=True)
class ConditionSpec:
    """One condition an adapter offers: a scalar property or a set of tokens (ids from the adapter)."""

    name: str
    kind: str  # "scalar" | "tokens"
    aligned: bool = True  # tokens only: token j describes element j (per-element register layouts)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"condition {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")


def null_conds(conds: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same conditions with nothing given (what guidance's unconditional rows see)."""
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else torch.full_like(v, -1)
            for k, v in conds.items()}


def drop_conds(conds: dict[str, Tensor], p: float, rand) -> dict[str, Tensor]:
    """Guidance dropout: each scalar independently, each token set as a whole, with probability p.

    ``rand(shape)`` draws uniform numbers (the model's shard-consistent stream)."""
    if p <= 0 or not conds:
        return conds
    out = {}
    for k, v in conds.items():
        if v.is_floating_point():
            out[k] = torch.where(rand(tuple(v.shape)).to(v.device) < p, torch.full_like(v, float("nan")), v)
        else:
            drop = (rand((v.shape[0],)).to(v.device) < p).unsqueeze(1)
            out[k] = torch.where(drop, torch.full_like(v, -1), v)
    return out


@dataclass
class Cond:
    """A class label per row plus the adapter's structured conditions, kept together through sampling."""

    label: Tensor  # (B,) long
    extra: dict[str, Tensor]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device) -> "Cond":
        return Cond(self.label.to(device), {k: v.to(device) for k, v in self.extra.items()})

    def rows(self, lo: int, hi: int) -> "Cond":
        return Cond(self.label[lo:hi], {k: v[lo:hi] for k, v in self.extra.items()})

    def with_null(self, null_label: int) -> "Cond":
        """Rows [conditional; unconditional] for one guided network call."""
        nulls = null_conds(self.extra)
        return Cond(torch.cat([self.label, torch.full_like(self.label, null_label)]),
                    {k: torch.cat([v, nulls[k]]) for k, v in self.extra.items()})


class ScalarEmbedder(nn.Module):
    """(B, P) normalised scalars, NaN = absent -> (B, d): per property an embedding ``e_i(v)`` or its null
    vector, summed over properties, then SiLU and a Linear.

    ``kind="linear"``: ``e_i(v) = v w_i + b_i`` with ``w_i ~ N(0, 0.02)``, the size of a class label's row.
    ``kind="fourier"``: ``e_i(v) = [sin, cos](2 pi v f_i) A_i + b_i`` with ``num_freqs`` frozen frequencies
    ``f_i ~ N(0, 1)`` (the values are z-scores, so one period spans about one standard deviation) and ``A_i``
    Xavier-initialised: a z-score of 1 moves the embedding at Xavier scale from the first step, not by a
    0.02-sized weight (measured no better on a molecular property at 15 CPU-minutes: docs/fine-tuning.md)."""

    def __init__(self, num: int, width: int, kind: str = "linear", num_freqs: int = 64):
        super().__init__()
        if kind not in ("linear", "fourier"):
            raise ValueError(f"scalar embedding must be 'linear' or 'fourier', got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.weight = nn.Parameter(torch.randn(num, width) * 0.02)
        else:
            self.register_buffer("freqs", torch.randn(num, num_freqs))  # frozen: a buffer, never trained
            bound = math.sqrt(6.0 / (2 * num_freqs + width))  # Xavier-uniform per property
            self.weight = nn.Parameter(torch.empty(num, 2 * num_freqs, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(num, width))
        self.null = nn.Parameter(torch.randn(num, width) * 0.02)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, width))

    def embed(self, v: Tensor) -> Tensor:
        """(B, P) values, none NaN -> (B, P, d) per-property embeddings before the null is chosen."""
        v = v.to(self.weight.dtype)
        if self.kind == "linear":
            return v.unsqueeze(-1) * self.weight + self.bias
        ang = 2 * math.pi * v.unsqueeze(-1) * self.freqs  # (B, P, F)
        feats = torch.cat([ang.sin(), ang.cos()], dim=-1)  # (B, P, 2F)
        return torch.einsum("bpf,pfd->bpd", feats, self.weight) + self.bias

    def forward(self, values: Tensor) -> Tensor:
        given = ~torch.isnan(values)  # (B, P)
        e = torch.where(given.unsqueeze(-1), self.embed(torch.nan_to_num(values)), self.null)  # (B, P, d)
        return self.mlp(e.sum(1))  # (B, d)


class TokenCondition(nn.Module):
    """(B, M) ids, -1 = padding -> tokens (B, M, d), their mask, and a summary vector (B, d) for ``c``."""

    def __init__(self, embed: nn.Module, width: int, aligned: bool):
        super().__init__()
        self.embed, self.aligned = embed, aligned
        self.summary = nn.Linear(width, width)
        self.null = nn.Parameter(torch.randn(width) * 0.02)
        self.set_pos = nn.Parameter(torch.zeros(width)) if not aligned else None

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = ids >= 0  # (B, M)
        tok = self.embed(ids.clamp_min(0)) * mask.unsqueeze(-1)  # (B, M, d)
        if self.set_pos is not None:
            tok = tok + self.set_pos
        n = mask.sum(1, keepdim=True)  # (B, 1)
        mean = tok.sum(1) / n.clamp_min(1)
        vec = torch.where(n > 0, self.summary(mean), self.null)  # (B, d)
        return tok, mask, vec


class ConditionEncoder(nn.Module):
    """All of an adapter's structured conditions -> a vector for ``c`` and extra sequence tokens."""

    def __init__(self, specs: list[ConditionSpec], width: int, token_embedders: dict[str, nn.Module],
                 scalar_embedding: str = "linear"):
        super().__init__()
        self.scalar_names = [s.name for s in specs if s.kind == "scalar"]
        self.scalars = (ScalarEmbedder(len(self.scalar_names), width, scalar_embedding) if self.scalar_names
                        else None)
        missing = [s.name for s in specs if s.kind == "tokens" and s.name not in token_embedders]
        if missing:
            raise ValueError(f"token condition(s) {missing} have no embedder (adapter.build_condition_embedders)")
        self.tokens = nn.ModuleDict({s.name: TokenCondition(token_embedders[s.name], width, s.aligned)
                                     for s in specs if s.kind == "tokens"})

    def forward(self, conds: dict[str, Tensor] | None, b: int, device: torch.device):
        """-> (vector (B, d), [(tokens (B, M, d), mask (B, M), aligned)]); absent conditions count as null."""
        conds = conds or {}
        vec = 0
        if self.scalars is not None:
            values = conds.get(SCALARS)
            if values is None:
                values = torch.full((b, len(self.scalar_names)), float("nan"), device=device)
            vec = vec + self.scalars(values)
        seqs = []
        for name, mod in self.tokens.items():
            ids = conds.get(name)
            if ids is None:
                ids = torch.full((b, 1), -1, dtype=torch.long, device=device)
            tok, mask, v = mod(ids)
            vec = vec + v
            seqs.append((tok, mask, mod.aligned))
        return vec, seqs
