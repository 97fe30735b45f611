"""Rectified-flow maths of UNITE (SPEC section 1), separate from the network.

Convention: t = 0 is pure noise, t = 1 is clean data, ``x_t = t * x1 + (1 - t) * eps``. The network
predicts the clean latent ``x1_hat`` (x-prediction); the ODE velocity and the loss are written from it.
Every constant here is an argument whose default is the paper's value; configs pass their own.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .reduce import masked_mean


def shift_time(t: Tensor, alpha: float = 0.5) -> Tensor:
    """Noise-schedule shift ``t' = a t / (1 + (a - 1) t)``.

    With ``a = 0.5`` more time is spent near the noisy end (t small); ``a = 1`` is the identity.
    It maps [0, 1] onto itself monotonically, so it also maps the sampler's time grid.
    """
    return alpha * t / (1.0 + (alpha - 1.0) * t)


def shift_time_derivative(t: Tensor, alpha: float = 0.5) -> Tensor:
    """d t' / d t of :func:`shift_time`, used to integrate in unshifted time with an adaptive solver."""
    return alpha / (1.0 + (alpha - 1.0) * t) ** 2


def logit_normal_time(normal: Tensor, mean: float = 0.0, std: float = 1.0, alpha: float = 0.5) -> Tensor:
    """Training times from standard normal draws: ``shift(sigmoid(mean + std * n))``."""
    return shift_time(torch.sigmoid(normal * std + mean), alpha)


def sample_time(n: int, mean: float = 0.0, std: float = 1.0, alpha: float = 0.5,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """Training times (n,): logit-normal ``sigmoid(N(mean, std))`` followed by the shift."""
    return logit_normal_time(torch.randn(n, device=device, generator=generator), mean, std, alpha)


def interpolate(x1: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Point on the straight path: ``x_t = t x1 + (1 - t) eps``; t (B,) broadcasts over the rest."""
    tb = t.view(-1, *([1] * (x1.dim() - 1)))
    return tb * x1 + (1.0 - tb) * eps


def x_to_velocity(x1_hat: Tensor, x_t: Tensor, t: Tensor, clamp: float = 0.05) -> Tensor:
    """ODE velocity from an x-prediction: ``v = (x1_hat - x_t) / max(1 - t, clamp)``."""
    tb = t.view(-1, *([1] * (x_t.dim() - 1)))
    return (x1_hat - x_t) / (1.0 - tb).clamp_min(clamp)


def flow_loss(x1_hat: Tensor, x1: Tensor, t: Tensor, clamp: float = 0.05,
              mask: Tensor | None = None) -> Tensor:
    """v-weighted x-loss ``mean((x1 - x1_hat)^2 / max(1 - t, clamp)^2)``.

    Args:
        x1_hat, x1: (B, K, C) predicted and target clean latents.
        t: (B,) flow times (already shifted).
        mask: optional (B, K) bool, True for real registers; padding registers do not count.
    Returns: scalar loss: per sample the mean over its real registers and channels, then the mean
    over samples (so every sample weighs the same, and shards of a batch average to the batch's loss).
    """
    w = (1.0 - t).clamp_min(clamp).pow(-2).view(-1, *([1] * (x1.dim() - 1)))
    err = (x1.float() - x1_hat.float()).pow(2) * w  # (B, K, C), in fp32 under bf16 autocast too
    if mask is None:
        return err.mean()
    return masked_mean(err, mask.unsqueeze(-1)).mean()  # (B, K, C) over (B, K, 1) -> (B,) -> scalar
