"""UNITE: the Generative Encoder, the decoder and the adapter's modules, and one training step's loss.

``Unite.forward(batch)`` returns the loss of SPEC section 4:

1. ``z0 = GE.tokenize(x)``; ``x_hat = Dec(noised z0)``; ``L_rec`` from the adapter.
2. ``x1 = stopgrad(z0)``; for k = 1..K: fresh t', eps; ``x1_hat = GE.denoise(x_t, t', y)``; ``L_k``.
3. ``L = L_rec + sum_k L_k``.

The two-stage baseline uses the same module in two phases: ``tokenizer`` (L_rec only) and then
``denoiser`` (flow loss of a separate denoiser on frozen tokenizer latents). The model reads its
:class:`Phase`; only ``Trainer.enter_phase`` sets it.

The register set of a batch (``Registers``: mask and positions) is built once in ``forward`` and passed
to every pass of the step.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor, nn

from .adapter import Adapter, Batch, checked_module
from .conditions import ConditionEncoder, drop_conds
from .config import RunConfig
from .flow import flow_loss, interpolate, logit_normal_time
from .model import PRESETS, GenerativeEncoder, LatentDecoder, Registers


class Phase(StrEnum):
    """What a training step optimises. String-valued: checkpoints store the plain strings."""

    JOINT = "joint"  # UNITE: reconstruction + flow losses, all parameters
    TOKENIZER = "tokenizer"  # two-stage, stage 1: reconstruction only
    DENOISER = "denoiser"  # two-stage, stage 2: flow loss on the frozen tokenizer's latents


@dataclass(frozen=True)
class Arch:
    depth: int
    width: int
    heads: int
    dec_depth: int
    dec_width: int
    dec_heads: int


def resolve_arch(cfg: RunConfig) -> Arch:
    """Preset sizes, with any explicit ``model.*`` size overriding its preset value."""
    p = dict(PRESETS[cfg.model.preset])
    for key in p:
        value = getattr(cfg.model, key)
        if value is not None:
            p[key] = value
    return Arch(**p)


class Unite(nn.Module):
    def __init__(self, adapter: Adapter, cfg: RunConfig):
        super().__init__()
        self.adapter, self.cfg = adapter, cfg
        a, m = resolve_arch(cfg), cfg.model

        specs = adapter.condition_specs() if hasattr(adapter, "condition_specs") else []

        def make_ge() -> GenerativeEncoder:
            conditions = (ConditionEncoder(specs, a.width, adapter.build_condition_embedders(a.width),
                                           scalar_embedding=m.scalar_embedding.value)
                          if specs else None)
            return GenerativeEncoder(adapter.layout, m.latent_dim, width=a.width, depth=a.depth, heads=a.heads,
                                     num_classes=adapter.num_classes, mlp_ratio=m.mlp_ratio,
                                     time_freqs=m.time_freqs, rope_theta=m.rope_theta,
                                     in_context_tokens=m.in_context_tokens, in_context_start=m.in_context_start,
                                     tokenize_t_max=cfg.flow.tokenize_t_max,
                                     self_condition=cfg.flow.self_condition > 0, conditions=conditions,
                                     prediction=cfg.flow.prediction.value)

        self.encoder = make_ge()
        # shared weights: the same module object, so exactly one parameter set
        self.denoiser = self.encoder if m.shared_weights else make_ge()
        self.decoder = LatentDecoder(adapter.layout, m.latent_dim, width=a.dec_width, depth=a.dec_depth,
                                     heads=a.dec_heads, mlp_ratio=m.mlp_ratio,
                                     pos_table=adapter.decoder_positions(a.dec_width))
        self.embedder = checked_module(adapter.build_embedder(a.width), adapter, "build_embedder")
        self.heads = checked_module(adapter.build_heads(a.dec_width), adapter, "build_heads")
        self.phase = Phase.JOINT  # set by Trainer.enter_phase only
        # weight of the flow loss in the total (flow.loss_warmup_steps): a buffer the trainer fills in place, so
        # a compiled forward reads a tensor instead of guarding on (and recompiling for) a Python float
        self.register_buffer("flow_weight", torch.ones(()), persistent=False)
        self.shard = (0, 1)  # (rank, world): random draws are made for the global batch and sliced

    def _rand(self, kind: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Uniform ("rand") or Gaussian ("randn") numbers for this process's slice of the global batch.

        Drawing the whole global batch on every process makes a data-parallel run consume exactly the
        random numbers of a single-process run with the same global batch.
        """
        rank, world = self.shard
        full = (shape[0] * world,) + tuple(shape[1:])
        x = (torch.rand if kind == "rand" else torch.randn)(full, device=device)
        return x[rank * shape[0]:(rank + 1) * shape[0]]

    def _rand_latents(self, b: int, regs: Registers, device: torch.device) -> Tensor:
        """Gaussian latents (B, K, C) drawn per register *position*, so padding never changes them."""
        full = self._rand("randn", (b, self.encoder.layout.table_size, self.cfg.model.latent_dim), device)
        return full[:, regs.pos[0]]

    # ------------------------------------------------------------------ the pieces
    def registers(self, mask: Tensor | None, b: int, device: torch.device,
                  conds: dict[str, Tensor] | None = None) -> Registers:
        """The register set of a batch of b samples with element mask (B, N) (None for fixed layouts);
        ``conds``: the batch's structured conditions, from which an adapter may switch extra registers off
        per sample (``register_mask``)."""
        hook = getattr(self.adapter, "register_mask", None)
        extra = hook(conds or {}) if hook is not None else None
        return self.encoder.layout.registers(mask, b, device, extra)

    def encode(self, batch: Batch, regs: Registers | None = None) -> Tensor:
        """Batch -> clean latents z0 (B, K, C). ``regs``: the batch's registers, if already built."""
        tokens = self.embedder(batch.data, batch.mask)  # (B, N, d)
        b, dev = tokens.shape[0], tokens.device
        regs = self.registers(batch.mask, b, dev, batch.conds) if regs is None else regs
        tok_mask = batch.mask if batch.mask is not None else torch.ones(tokens.shape[:2], dtype=torch.bool, device=dev)
        noise = self._rand_latents(b, regs, dev)
        return self.encoder.tokenize(tokens, tok_mask, regs, noise=noise, t=self._rand("rand", (b,), dev))

    def decode(self, z: Tensor, mask: Tensor | None, regs: Registers | None = None) -> dict[str, Tensor]:
        """Latents (B, K, C) -> the adapter heads' outputs. ``regs``: the batch's registers, if already built.

        With extra registers in the layout the outputs also carry ``register_mask`` (B, K): which registers
        each sample had (a composite adapter reads a sample's kind from it)."""
        regs = self.registers(mask, z.shape[0], z.device) if regs is None else regs
        out = self.heads(self.decoder(z, regs), mask)
        return dict(out, register_mask=regs.mask) if self.encoder.layout.extra else out

    def decoder_noise(self, z: Tensor, regs: Registers) -> Tensor:
        """Training-only latent noise before the decoder (SPEC section 3), per sample with prob p."""
        c = self.cfg.decoder_noise
        if c.mode == "none" or not self.training:
            return z
        b = z.shape[0]
        view = (b,) + (1,) * (z.dim() - 1)
        apply = (self._rand("rand", (b,), z.device) < c.prob).view(view)
        eps = self._rand_latents(b, regs, z.device)
        if c.mode == "interpolate":
            t = (c.t_min + (1 - c.t_min) * self._rand("rand", (b,), z.device)).view(view)
            noised = t * z + (1 - t) * eps
        else:
            noised = z + c.sigma * eps
        return torch.where(apply, noised, z)

    def drop_labels(self, cond: Tensor) -> Tensor:
        """Label dropout to the null entry (classifier-free guidance training)."""
        if not self.training or self.adapter.num_classes == 0 or self.cfg.flow.label_dropout == 0:
            return cond
        drop = self._rand("rand", tuple(cond.shape), cond.device) < self.cfg.flow.label_dropout
        return torch.where(drop, torch.full_like(cond, self.encoder.null_class), cond)

    def drop_conds(self, conds: dict[str, Tensor]) -> dict[str, Tensor]:
        """Structured-condition dropout (each scalar, each token set) for guidance training."""
        if not self.training or not conds:
            return conds
        dev = next(iter(conds.values())).device
        return drop_conds(conds, self.cfg.flow.label_dropout, lambda shape: self._rand("rand", shape, dev))

    def flow_losses(self, x1: Tensor, cond: Tensor, regs: Registers,
                    conds: dict[str, Tensor] | None = None) -> list[Tensor]:
        """K flow passes on clean latents x1 (B, K, C), each with fresh t' and eps (and fresh dropout of the
        labels and structured conditions ``conds``)."""
        f = self.cfg.flow
        losses = []
        for k in range(f.flow_batches):
            t = logit_normal_time(self._rand("randn", (x1.shape[0],), x1.device), f.logit_mean, f.logit_std, f.shift)
            x_t = interpolate(x1, self._rand_latents(x1.shape[0], regs, x1.device), t)
            y, extra = self.drop_labels(cond), self.drop_conds(conds or {})
            sc = self.self_condition(x_t, t, y, regs, k, extra)
            x1_hat = self.denoiser.denoise(x_t, t, y, regs, self_cond=sc, conds=extra)  # (B, K, C)
            losses.append(flow_loss(x1_hat, x1, t, f.clamp, regs.mask))
        return losses

    def self_condition(self, x_t: Tensor, t: Tensor, y: Tensor, regs: Registers,
                       pass_index: int = 0, conds: dict[str, Tensor] | None = None) -> Tensor | None:
        """The self-conditioning input of one flow pass (Chen et al. 2022, as ADiT): with probability
        ``flow.self_condition`` (one coin for the whole global batch, drawn alike on every rank) the
        detached x-prediction of a first, gradient-free pass; zeros otherwise. None when switched off.
        """
        p = self.cfg.flow.self_condition
        if p <= 0:
            return None
        zeros = torch.zeros_like(x_t)
        # a Python number from this step's seed (the trainer seeds torch per step) and the pass index: the
        # same on every rank, no draw from torch's streams, and deciding reads nothing back from a GPU
        coin = random.Random(torch.initial_seed() * 1009 + pass_index).random()
        if not self.training or coin >= p:
            return zeros
        with torch.no_grad():
            return self.denoiser.denoise(x_t, t, y, regs, self_cond=zeros, conds=conds).detach()  # (B, K, C)

    # ------------------------------------------------------------------ one step
    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss (scalar) and its parts for logging."""
        logs: dict[str, Tensor] = {}
        # the phase's loss terms, summed at the end: a sum started from a zeros tensor made inductor's compiled
        # tokenizer phase (two-stage) return a loss without grad_fn (torch 2.14; the joint phase was unaffected)
        terms: list[Tensor] = []
        regs = self.registers(batch.mask, batch.cond.shape[0], batch.cond.device, batch.conds)  # once per step
        if self.phase in (Phase.JOINT, Phase.TOKENIZER):
            z0 = self.encode(batch, regs)  # (B, K, C)
            out = self.decode(self.decoder_noise(z0, regs), batch.mask, regs)
            l_rec, parts = self.adapter.reconstruction_loss(out, batch)
            terms.append(l_rec)
            logs["rec"] = l_rec.detach()
            logs.update({f"rec/{k}": torch.as_tensor(v).detach() for k, v in parts.items()})
        if self.phase == Phase.DENOISER:
            with torch.no_grad():  # two-stage: the tokenizer is frozen
                z0 = self.encode(batch, regs)
        if self.phase in (Phase.JOINT, Phase.DENOISER):
            x1 = z0.detach() if (self.cfg.flow.stop_gradient or self.phase == Phase.DENOISER) else z0
            flows = self.flow_losses(x1, batch.cond, regs, batch.conds)
            l_flow = torch.stack(flows).sum()  # summed over the K passes, not averaged
            terms.append(self.flow_weight * l_flow if self.phase == Phase.JOINT else l_flow)
            logs["flow"] = l_flow.detach()
        total = sum(terms[1:], terms[0])
        logs["loss"] = total.detach()
        return total, logs

    def trainable_for_phase(self) -> list[nn.Parameter]:
        """Parameters that the current phase updates (all of them for single-stage training)."""
        if self.phase == Phase.JOINT:
            return list(self.parameters())
        if self.phase == Phase.TOKENIZER:
            keep = [self.encoder, self.decoder, self.embedder, self.heads]
        else:
            keep = [self.denoiser]
        ids = {id(p) for mod in keep for p in mod.parameters()}
        return [p for p in self.parameters() if id(p) in ids]
