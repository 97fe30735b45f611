"""Samplers (SPEC section 5): integrate the flow ODE from noise (t = 0) to data (t = 1).

The network gives an x-prediction; the velocity is ``(x1_hat - x_t) / max(1 - t, clamp)``. Time runs on
the shifted grid ``t = shift(s)`` with s uniform: Euler and Heun step on that grid, dopri5 integrates in s
with the chain rule ``dx/ds = v(x, shift(s)) * shift'(s)`` so the same schedule guides its step sizes.

Usage::

    z = integrate(lambda x, t: velocity(x, t), torch.randn(8, 16, 16), solver="heun", steps=50)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

from .conditions import Cond
from .flow import shift_time, shift_time_derivative, x_to_velocity

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x (B, ...), t (B,)) -> dx/dt


def integrate(f: VelocityFn, x0: Tensor, *, solver: str = "heun", steps: int = 50, shift: float = 1.0,
              atol: float = 1e-6, rtol: float = 1e-3, final_euler: bool = False) -> tuple[Tensor, int]:
    """Solve dx/dt = f(x, t) from t = 0 to 1. Returns the end state and the number of evaluations.

    ``final_euler``: Heun's last step is an Euler step, as JiT's public code does (50 steps = 99
    evaluations; the paper counts 100, Heun to the end). With an x-prediction the velocity at t = 1 is
    ``(x1_hat - x) / clamp``: the Euler step ends on the last x-prediction, while a Heun corrector at t = 1
    averages in one more, amplified, correction (a model that returns its input there stops halfway).
    Which ends better is measured per modality in the benchmarks (README); the order stays 2 either way:
    one Euler step adds an O(h^2) error.
    """
    nfe = 0
    b = x0.shape[0]

    def call(x: Tensor, t: float | Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return f(x, torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(b))

    if solver == "dopri5":
        def rhs(s: Tensor, x: Tensor) -> Tensor:
            return call(x, shift_time(s, shift)) * shift_time_derivative(s, shift)

        s = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
        return odeint(rhs, x0, s, method="dopri5", atol=atol, rtol=rtol)[-1], nfe
    grid = shift_time(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64), shift).tolist()
    x = x0
    for i, (t0, t1) in enumerate(zip(grid[:-1], grid[1:])):
        v0 = call(x, t0)
        if solver == "euler" or (final_euler and i == steps - 1):
            x = x + (t1 - t0) * v0
        elif solver == "heun":
            x_pred = x + (t1 - t0) * v0
            x = x + (t1 - t0) * 0.5 * (v0 + call(x_pred, t1))
        else:
            raise ValueError(f"unknown solver {solver!r}")
    return x, nfe


def guided_prediction(predict: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, t: Tensor, *,
                      cond: Tensor | Cond, null: int, scale: float, interval: tuple[float, float]) -> Tensor:
    """Classifier-free guidance on x-predictions: ``xu + w (xc - xu)`` only for t in the interval.

    ``cond``: labels (B,), or a :class:`Cond` whose unconditional rows drop every structured condition too.

    Both predictions already pass the network's final LayerNorm before they are mixed. Outside the
    interval (or with w = 1) the conditional prediction alone is used. The interval is open at both ends,
    ``lo < t < hi``, as SPEC writes it and as the authors' public sampler compares (``t < hi``): with the
    default hi = 1 a Heun step that evaluates at t = 1 uses the conditional prediction alone there.
    """
    lo, hi = interval
    inside = (t > lo) & (t < hi)
    if scale == 1.0 or not bool(inside.any()):
        return predict(x, t, cond)
    both_cond = (cond.with_null(null) if isinstance(cond, Cond)
                 else torch.cat([cond, torch.full_like(cond, null)]))
    both = predict(torch.cat([x, x]), torch.cat([t, t]), both_cond)
    xc, xu = both.chunk(2)
    guided = xu + scale * (xc - xu)
    w = inside.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(w, guided, xc)


@torch.no_grad()
def sample_latents(denoise: Callable[..., Tensor], noise: Tensor, *, cond: Tensor | Cond, null: int,
                   solver: str = "heun", steps: int = 50, shift: float = 0.5, clamp: float = 0.05,
                   cfg: float = 1.0, cfg_interval: tuple[float, float] = (0.1, 1.0), atol: float = 1e-6,
                   rtol: float = 1e-3, self_condition: bool = False, final_euler: bool = False) -> tuple[Tensor, int]:
    """Noise (B, K, C) -> clean latents (B, K, C) with the given solver and guidance.

    ``denoise(x, t, cond)`` is the x-prediction network; ``cond`` (B,) long the labels (or a :class:`Cond`
    with structured conditions), ``null`` the label of no condition. Everything after ``noise`` is a keyword: two swapped floats would run silently.

    ``self_condition``: ``denoise`` takes a fourth argument, the previous x-prediction for the same batch
    rows (zeros at the first evaluation), as the model saw it in training.
    """
    previous: dict[int, Tensor] = {}  # keyed by batch size: guidance doubles the batch inside its interval

    def predict(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        if not self_condition:
            return denoise(x, t, c)
        out = denoise(x, t, c, previous.get(x.shape[0], torch.zeros_like(x)))
        previous[x.shape[0]] = out
        return out

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        x1_hat = guided_prediction(predict, x, t, cond=cond, null=null, scale=cfg, interval=tuple(cfg_interval))
        return x_to_velocity(x1_hat, x, t, clamp)

    return integrate(velocity, noise, solver=solver, steps=steps, shift=shift, atol=atol, rtol=rtol,
                     final_euler=final_euler)
