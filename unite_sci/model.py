"""The Generative Encoder (GE) and the latent decoder of UNITE (SPEC sections 2-3).

Reads top to bottom: helpers, embedders, blocks, the GE, the decoder, size presets. The networks know
nothing about flow matching (``flow.py``) or any modality: a modality reaches them only through an
input embedder (tokens of width ``d``) and output heads that its adapter supplies, and through the
:class:`RegisterLayout` it chooses.

Shapes: B batch, K registers, N input elements, L = K (+ N) sequence, d width, C latent channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ----------------------------------------------------------------------------- helpers
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def sincos_1d(num: int, dim: int) -> Tensor:
    """Fixed 1-D sin-cos table (num, dim) as in the Transformer paper."""
    pos = torch.arange(num, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(num, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.float()


def sincos_2d(side: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos table (side*side, dim): half the channels encode rows, half columns."""
    rows = sincos_1d(side, dim // 2)
    return torch.cat([rows.repeat_interleave(side, 0), rows.repeat(side, 1)], dim=1)


def rope_tables(pos: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables (B, 1, L, head_dim/2) for rotary embedding at integer positions pos (B, L)."""
    freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    ang = pos.float().unsqueeze(-1) * freq  # (B, L, head_dim/2)
    return ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, H, L, D) by the position angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


# ----------------------------------------------------------------------------- layout
class Registers(NamedTuple):
    """The register set of one batch: built once per batch by whoever holds it and passed down, so a
    training step does not rebuild it in every pass."""

    mask: Tensor  # (B, K) bool, True = real register
    pos: Tensor  # (B, K) long, index into the register tables

    def repeat(self, n: int) -> "Registers":
        """The same set for a batch stacked n times (guidance runs conditional and null rows together)."""
        return Registers(self.mask.repeat(n, 1), self.pos.repeat(n, 1))


@dataclass(frozen=True)
class RegisterLayout:
    """How many registers (latent tokens) a sample gets, chosen by the adapter.

    ``per_element=False``: a fixed number ``count`` of registers (images). ``per_element=True``: one
    register per input element, up to ``count`` elements, padded with a mask, plus ``extra`` registers
    that every sample has (for example a periodic cell). Register i and element i share position index i;
    extra registers sit at fixed positions ``count + j`` so that they do not move with padding.
    """

    per_element: bool
    count: int
    extra: int = 0

    @property
    def table_size(self) -> int:
        return self.count + self.extra

    def registers(self, elem_mask: Tensor | None, batch: int, device: torch.device,
                  extra_mask: Tensor | None = None) -> Registers:
        """Register mask (B, K) bool and positions (B, K) long for a batch. ``extra_mask`` (B, extra) bool
        switches extra registers off per sample (a composite of data sets: a cell register for crystals
        only); None: every sample has them all."""
        if not self.per_element:
            pos = torch.arange(self.count, device=device).expand(batch, -1)
            return Registers(torch.ones(batch, self.count, dtype=torch.bool, device=device), pos)
        if elem_mask is None:
            raise ValueError("a per-element register layout needs the element mask")
        n = elem_mask.shape[1]
        pos = torch.cat([torch.arange(n, device=device), self.count + torch.arange(self.extra, device=device)])
        extra = (torch.ones(batch, self.extra, dtype=torch.bool, device=device) if extra_mask is None
                 else extra_mask.to(device=device, dtype=torch.bool))
        return Registers(torch.cat([elem_mask, extra], dim=1), pos.expand(batch, -1))

    def token_positions(self, num_tokens: int, batch: int, device: torch.device) -> Tensor:
        """Positions (B, N) of input tokens: shared with their register, or after the K registers."""
        start = 0 if self.per_element else self.count
        return (start + torch.arange(num_tokens, device=device)).expand(batch, -1)

    def mask_from_sizes(self, sizes: Tensor) -> Tensor | None:
        """Element mask (B, max size) for generation with the given element counts (B,)."""
        if not self.per_element:
            return None
        n = int(sizes.max())
        return torch.arange(n, device=sizes.device).unsqueeze(0) < sizes.unsqueeze(1)


# ----------------------------------------------------------------------------- embedders
class TimeEmbedder(nn.Module):
    """Frozen Gaussian Fourier features ``[sin, cos](2 pi t W)``, W ~ N(0, 1), then an MLP."""

    def __init__(self, width: int, num_freqs: int = 256):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_freqs))  # frozen: a buffer, never trained
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        ang = 2 * math.pi * t.float().unsqueeze(-1) * self.freqs  # (B, F)
        return self.mlp(torch.cat([ang.sin(), ang.cos()], dim=-1))  # (B, d)


class ConditionEmbedder(nn.Module):
    """Class table with one extra null entry (index ``num_classes``) for classifier-free guidance."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.null = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, cond: Tensor) -> Tensor:
        return self.table(cond)  # (B, d)


# ----------------------------------------------------------------------------- blocks
class Attention(nn.Module):
    def __init__(self, width: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hd = width // heads
        self.q_norm = nn.RMSNorm(hd) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hd) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, attn_mask: Tensor | None) -> Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, hd)
        return self.proj(out.transpose(1, 2).reshape(b, l, d))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class GEBlock(nn.Module):
    """adaLN-Zero block: RMSNorm, QK-norm attention with RoPE, SwiGLU, and an RMSNorm after the block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.RMSNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.RMSNorm(width)
        self.mlp = SwiGLU(width, int(2 / 3 * mlp_ratio * width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.post_norm = nn.RMSNorm(width)

    def forward(self, x: Tensor, c: Tensor, rope, attn_mask: Tensor | None) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).unsqueeze(1).chunk(6, dim=-1)  # each (B, 1, d)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1), rope, attn_mask)  # (B, L, d)
        x = x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))  # (B, L, d)
        return self.post_norm(x)


class FinalLayer(nn.Module):
    """adaLN + Linear(d -> C) + LayerNorm(C) with learnable affine, applied to every latent output.

    ``velocity=True`` adds a second, unnormalised Linear(d -> C): the denoiser's output under
    ``flow.prediction=velocity`` (a velocity is not a latent, so it does not pass the latent LayerNorm).
    """

    def __init__(self, width: int, channels: int, velocity: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, channels)
        self.out_norm = nn.LayerNorm(channels)  # learnable affine: the model calibrates its latent scale
        self.velocity = nn.Linear(width, channels) if velocity else None

    def forward(self, x: Tensor, c: Tensor, velocity: bool = False) -> Tensor:
        shift, scale = self.ada(c).unsqueeze(1).chunk(2, dim=-1)
        h = modulate(self.norm(x), shift, scale)
        return self.velocity(h) if velocity else self.out_norm(self.linear(h))  # (B, K, C)


# ----------------------------------------------------------------------------- Generative Encoder
class GenerativeEncoder(nn.Module):
    """One transformer, two modes: ``tokenize`` (tokens + noise registers -> z0) and ``denoise``.

    The signature of the network itself is ``forward(registers, t, cond, ...) -> latents``; the two
    modes only choose what goes in.
    """

    def __init__(self, layout: RegisterLayout, latent_dim: int, *, width: int, depth: int, heads: int,
                 num_classes: int = 0, mlp_ratio: float = 4.0, time_freqs: int = 256,
                 rope_theta: float = 1e4, in_context_tokens: int = 0, in_context_start: int = 4,
                 tokenize_t_max: float = 0.01, self_condition: bool = False,
                 conditions: nn.Module | None = None, prediction: str = "x"):
        super().__init__()
        self.layout, self.latent_dim, self.width = layout, latent_dim, width
        self.rope_theta, self.heads = rope_theta, heads
        self.tokenize_t_max = tokenize_t_max
        if prediction not in ("x", "velocity"):
            raise ValueError(f"prediction must be 'x' or 'velocity', got {prediction!r}")
        self.prediction = prediction
        self.in_context_tokens, self.in_context_start = in_context_tokens, in_context_start
        self.x_embed = nn.Linear(latent_dim, width)
        # self-conditioning: the previous x-prediction enters through its own projection, zero-initialised
        # so that a model trained without it starts as if it were absent
        self.sc_embed = nn.Linear(latent_dim, width) if self_condition else None
        self.reg_embed = nn.Parameter(sincos_1d(layout.table_size, width))  # learnable, sin-cos init
        self.t_embed = TimeEmbedder(width, time_freqs)
        self.y_embed = ConditionEmbedder(num_classes, width)
        self.conditions = conditions  # ConditionEncoder of the adapter's structured conditions, if any
        if in_context_tokens:
            self.ctx_pos = nn.Parameter(torch.zeros(in_context_tokens, width).normal_(std=0.02))
        self.blocks = nn.ModuleList(GEBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(width, latent_dim, velocity=prediction == "velocity")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):  # condition tokens (an adapter's table) start as small as labels:
                nn.init.normal_(m.weight, std=0.02)  # N(0, 1) rows made c and the sequence ~10x too large
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        if self.sc_embed is not None:
            nn.init.zeros_(self.sc_embed.weight)
        if self.final.velocity is not None:  # starts as x1_hat = x_t; unlike the latent head no LayerNorm follows
            nn.init.zeros_(self.final.velocity.weight)
        # final.linear keeps its xavier init: a zero output would sit at LayerNorm's singular point

    @property
    def null_class(self) -> int:
        return self.y_embed.null

    def forward(self, registers: Tensor, t: Tensor, cond: Tensor, *, regs: Registers,
                tokens: Tensor | None = None, tok_mask: Tensor | None = None,
                tok_pos: Tensor | None = None, self_cond: Tensor | None = None,
                conds: dict[str, Tensor] | None = None, velocity: bool = False) -> Tensor:
        """registers (B, K, C), t (B,), cond (B,) long, masks bool True = real -> latents (B, K, C).

        ``regs``: the batch's register mask and positions (``layout.registers``); ``tokens`` (B, N, d) with
        ``tok_mask`` and ``tok_pos`` (B, N) join the sequence in tokenize mode.

        ``self_cond`` (B, K, C): the previous clean-latent prediction (self-conditioning); zeros when there is
        none yet (as in training); None adds nothing (tokenize mode, or a model built without it).
        ``conds``: the adapter's structured conditions (``conditions.py``); absent ones count as not given.
        ``velocity``: return the velocity head's output instead of latents (``prediction="velocity"``).
        """
        b, k, _ = registers.shape
        reg_mask, reg_pos = regs
        x = self.x_embed(registers) + self.reg_embed[reg_pos]  # (B, K, d)
        if self.sc_embed is not None and self_cond is not None:
            x = x + self.sc_embed(self_cond)  # (B, K, d)
        pos, mask = reg_pos, reg_mask
        if tokens is not None:
            if self.layout.per_element:  # element i shares register i's index embedding
                tokens = tokens + self.reg_embed[tok_pos]
            x = torch.cat([x, tokens], dim=1)  # (B, K + N, d)
            pos, mask = torch.cat([reg_pos, tok_pos], 1), torch.cat([reg_mask, tok_mask], 1)
        c = self.t_embed(t) + self.y_embed(cond)  # (B, d)
        if self.conditions is not None:
            vec, seqs = self.conditions(conds, b, x.device)
            c = c + vec
            for ctok, cmask, aligned in seqs:
                x, pos, mask = self._append_condition(x, pos, mask, ctok, cmask, aligned)
        rope = rope_tables(pos, self.width // self.heads, self.rope_theta)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, L): padding is never attended to
        for i, blk in enumerate(self.blocks):
            if self.in_context_tokens and i == self.in_context_start:
                x, rope, attn_mask = self._add_context(x, c, pos, mask)
            x = blk(x, c, rope, attn_mask)  # (B, L, d)
        skip = self.in_context_tokens if self.in_context_tokens and len(self.blocks) > self.in_context_start else 0
        return self.final(x[:, skip:skip + k], c, velocity)  # (B, K, C)

    def _append_condition(self, x: Tensor, pos: Tensor, mask: Tensor, tok: Tensor, tmask: Tensor,
                          aligned: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Condition tokens (B, M, d) join the sequence: aligned ones at their elements' register positions
        (with those registers' index embedding), a set at one shared position (-1)."""
        b, m = tmask.shape
        if aligned and self.layout.per_element:
            tpos = self.layout.token_positions(m, b, x.device)
            tok = tok + self.reg_embed[tpos]
        else:
            tpos = torch.full((b, m), -1, dtype=torch.long, device=x.device)
        return torch.cat([x, tok], 1), torch.cat([pos, tpos], 1), torch.cat([mask, tmask], 1)

    def _add_context(self, x: Tensor, c: Tensor, pos: Tensor, mask: Tensor):
        """Prepend copies of the condition embedding (public code: from block 4 on)."""
        b, n = x.shape[0], self.in_context_tokens
        ctx = c.unsqueeze(1) + self.ctx_pos  # (B, n, d)
        ctx_pos = (-1 - torch.arange(n, device=x.device)).expand(b, -1)
        pos = torch.cat([ctx_pos, pos], 1)
        mask = torch.cat([torch.ones(b, n, dtype=torch.bool, device=x.device), mask], 1)
        rope = rope_tables(pos, self.width // self.heads, self.rope_theta)
        return torch.cat([ctx, x], 1), rope, mask[:, None, None, :]

    def tokenize(self, tokens: Tensor, tok_mask: Tensor, regs: Registers, *,
                 noise: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """Input tokens (B, N, d) -> clean latents z0 (B, K, C); registers start from N(0, I).

        ``regs``: the batch's ``layout.registers``. ``noise`` (B, K, C) and ``t`` (B,) may be given (the
        trainer draws them shard-consistently).
        """
        b, n, _ = tokens.shape
        if noise is None:
            noise = torch.randn(b, regs.mask.shape[1], self.latent_dim, device=tokens.device)
        if t is None:
            t = torch.rand(b, device=tokens.device)
        t = t * self.tokenize_t_max  # the noise end of the path
        null = torch.full((b,), self.null_class, dtype=torch.long, device=tokens.device)
        tok_pos = self.layout.token_positions(n, b, tokens.device)
        return self(noise, t, null, regs=regs, tokens=tokens, tok_mask=tok_mask, tok_pos=tok_pos)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor, regs: Registers, *,
                self_cond: Tensor | None = None, conds: dict[str, Tensor] | None = None) -> Tensor:
        """Noisy latents x_t (B, K, C) at flow time t (B,) -> predicted clean latents (B, K, C).

        ``regs``: the batch's ``layout.registers``. ``self_cond`` (B, K, C) is the previous prediction when
        the model was built with self-conditioning; ``conds`` the structured conditions (``conditions.py``).
        With ``prediction="velocity"`` the network gives a velocity F and ``x1_hat = x_t + (1 - t) F``.
        """
        if self.prediction == "x":
            return self(x_t, t, cond, regs=regs, self_cond=self_cond, conds=conds)
        f = self(x_t, t, cond, regs=regs, self_cond=self_cond, conds=conds, velocity=True)  # (B, K, C)
        return x_t + (1.0 - t).view(-1, 1, 1).to(f.dtype) * f


# ----------------------------------------------------------------------------- decoder
class DecoderBlock(nn.Module):
    """Pre-LN ViT block (LayerNorm, attention, GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qk_norm=False)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, int(mlp_ratio * width)), nn.GELU(),
                                 nn.Linear(int(mlp_ratio * width), width))

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), None, attn_mask)
        return x + self.mlp(self.norm2(x))


class LatentDecoder(nn.Module):
    """Latents (B, K, C) -> hidden states (B, K, d) for the adapter's output heads.

    Positions are a fixed sin-cos table over register positions unless the adapter gives its own
    table (images: a 2-D grid).
    """

    def __init__(self, layout: RegisterLayout, latent_dim: int, *, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, pos_table: Tensor | None = None):
        super().__init__()
        self.layout = layout
        self.embed = nn.Linear(latent_dim, width)
        table = pos_table if pos_table is not None else sincos_1d(layout.table_size, width)
        self.register_buffer("pos", table, persistent=False)
        self.blocks = nn.ModuleList(DecoderBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, z: Tensor, regs: Registers) -> Tensor:
        """z (B, K, C) with the batch's ``layout.registers`` -> hidden states (B, K, d)."""
        x = self.embed(z) + self.pos[regs.pos]  # (B, K, d)
        attn_mask = regs.mask[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, attn_mask)  # (B, K, d)
        return self.norm(x)


# ----------------------------------------------------------------------------- presets
# depth / width / heads of the GE and of the decoder. S, B, L, XL are the paper's (Table 7; the
# decoder size of S is not published: ViT-S). tiny and small are this toolkit's CPU presets.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(depth=4, width=128, heads=4, dec_depth=2, dec_width=128, dec_heads=4),
    "small": dict(depth=6, width=256, heads=4, dec_depth=4, dec_width=256, dec_heads=4),
    "S": dict(depth=12, width=384, heads=6, dec_depth=12, dec_width=384, dec_heads=6),
    "B": dict(depth=12, width=768, heads=12, dec_depth=12, dec_width=768, dec_heads=12),
    "L": dict(depth=24, width=1024, heads=16, dec_depth=24, dec_width=1024, dec_heads=16),
    "XL": dict(depth=28, width=1152, heads=16, dec_depth=24, dec_width=1024, dec_heads=16),
}
CPU_PRESETS = ("tiny", "small")
