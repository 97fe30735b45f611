"""Pixel-space peer of the image benchmark: what a user would train instead of UNITE on small images.

A diffusers ``UNet2DModel`` (a few hundred thousand parameters, class-conditional through
``num_class_embeds``) trained directly on pixels with UNITE's own rectified-flow objective and sampled
with UNITE's own sampler, so that the network is the only difference:

- objective: :mod:`unite_sci.flow` (t = 0 noise, t = 1 data; logit-normal t with the time shift;
  x-prediction, or velocity with ``x1_hat = x_t + (1 - t) F``; the v-weighted x-loss, summed over
  ``flow.flow_batches`` passes; label dropout ``flow.label_dropout`` to the null class);
- optimisation: the run config's AdamW settings, warm-up + cosine (:func:`unite_sci.optim.lr_at`), grad
  clip and EMA (:class:`unite_sci.optim.EMA`), batches in the trainer's order (``StepBatchSampler``), the
  same wall-clock budget (data loading counted, as the trainer does) or the same step count;
- sampling: :func:`unite_sci.sampling.sample_latents` with the config's solver, steps, time shift, CFG
  scale and interval, temperature and seed, class-balanced labels ``i % classes``;
- scoring: the image adapter's ``export`` (``samples.npz``) and ``evaluate``, as for UNITE's samples.

Pixels enter the network in [-1, 1] (as UNITE's patch embedding sees them) and leave clamped to [0, 1].
The study runner (``benchmarks/study.py``) calls :func:`run_job` for a candidate ``peer:pixel_unet[:16,32,32]``
(the UNet's ``block_out_channels``); it trains into ``<run>/peer/last.pt`` (kept: a finished run is only
sampled and scored again) and writes ``<run>/eval/results.json`` shaped like the protocol's.
"""
from __future__ import annotations

import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unite_sci.checkpoint import FORMAT, atomic_save, load_checkpoint
from unite_sci.config import FlowConfig, OptimName, RunConfig, SampleConfig, to_yaml
from unite_sci.engine import load_config, make_adapter, provenance
from unite_sci.errors import UserError
from unite_sci.files import write_json
from unite_sci.flow import flow_loss, interpolate, logit_normal_time
from unite_sci.optim import EMA, build_optimizers, lr_at
from unite_sci.sampling import sample_latents
from unite_sci.trainer import StepBatchSampler, resolve_device, step_seed

from unite_sci_benchmarks.study import limit_overrides, limit_reached

CHANNELS = (16, 32, 32)  # UNet2DModel block_out_channels: ~0.27M parameters for one 32 px channel
TIME_SCALE = 1000.0  # diffusers' sinusoidal timestep embedding is made for DDPM step numbers 0..1000
NAME = "diffusers UNet2DModel, pixel space"


def build_unet(channels: tuple[int, ...], image_size: int, image_channels: int, num_classes: int) -> nn.Module:
    """A small class-conditional UNet (one ResNet block per level, self-attention in the middle block);
    label ``num_classes`` is the null class of classifier-free guidance."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UserError("the pixel-space peer needs diffusers: pip install 'unite-sci[bench]'") from None
    n = len(channels)
    return UNet2DModel(sample_size=image_size, in_channels=image_channels, out_channels=image_channels,
                       block_out_channels=tuple(channels), layers_per_block=1, down_block_types=("DownBlock2D",) * n,
                       up_block_types=("UpBlock2D",) * n, num_class_embeds=num_classes + 1,
                       norm_num_groups=min(8, min(channels)))


class PixelFlowNet(nn.Module):
    """A pixel network in UNITE's denoiser signature: ``(x_t (B, C, H, W), t (B,), labels (B,)) -> x1_hat``.

    ``prediction="x"``: the network's output is the clean image (in [-1, 1] units); ``"velocity"``: it is a
    velocity F and ``x1_hat = x_t + (1 - t) F`` (``flow.prediction``, as ``GenerativeEncoder.denoise``).
    """

    def __init__(self, unet: nn.Module, prediction: str = "x"):
        super().__init__()
        self.unet, self.prediction = unet, prediction

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        f = self.unet(x_t, t * TIME_SCALE, class_labels=labels).sample  # (B, C, H, W)
        if self.prediction == "x":
            return f
        return x_t + (1.0 - t).view(-1, 1, 1, 1) * f


def flow_objective(net: nn.Module, x1: Tensor, labels: Tensor, f: FlowConfig, null: int) -> Tensor:
    """UNITE's flow loss on clean images x1 (B, C, H, W) in [-1, 1], summed over ``f.flow_batches`` passes.

    Each pass draws from torch's global generator, in the order of ``Unite.flow_losses``: normals for the
    logit-normal time (then shifted), the noise eps, uniforms for the label dropout to ``null``.
    """
    b = x1.shape[0]
    total = x1.new_zeros(())
    for _ in range(f.flow_batches):
        t = logit_normal_time(torch.randn(b, device=x1.device), f.logit_mean, f.logit_std, f.shift)  # (B,)
        x_t = interpolate(x1, torch.randn_like(x1), t)  # (B, C, H, W)
        drop = torch.rand(b, device=x1.device) < f.label_dropout
        y = torch.where(drop, torch.full_like(labels, null), labels)
        total = total + flow_loss(net(x_t, t, y), x1, t, f.clamp)
    return total


def make_net(cfg: RunConfig, adapter: Any, channels: tuple[int, ...]) -> PixelFlowNet:
    return PixelFlowNet(build_unet(channels, cfg.data.image_size, adapter.channels, adapter.num_classes),
                        cfg.flow.prediction.value)


def train_peer(cfg: RunConfig, adapter: Any, net: PixelFlowNet, ckpt: Path, channels: tuple[int, ...]) -> dict:
    """Train until ``train.max_steps`` or ``train.budget_minutes`` (wall time of the steps, data loading
    included); resumes from ``ckpt`` if it holds an unfinished run, saves there at the end and every
    ``train.ckpt_every_minutes``. Returns the saved state."""
    t, o = cfg.train, cfg.optim
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = adapter.build_splits()["train"]
    net.to(device)
    ema = EMA(net, o.ema_decay, o.ema_warmup)
    base_lr = o.lr * (t.batch_size / o.lr_reference_batch if o.lr_reference_batch else 1.0)
    params = list(net.parameters())
    # Muon orthogonalises the transformer's block matrices; a UNet has none, so the peer stays on AdamW
    optimizers = build_optimizers(params, {}, replace(o, name=OptimName.adamw), base_lr)
    step, elapsed = 0, 0.0
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizers[0].load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
    order = StepBatchSampler(len(data), t.batch_size, t.seed, step)

    def progress() -> float:
        return max(step / t.max_steps if t.max_steps else 0.0,
                   elapsed / (60 * t.budget_minutes) if t.budget_minutes else 0.0)

    def save() -> dict[str, Any]:
        state = {"format": FORMAT, "peer": NAME, "block_out_channels": list(channels), "step": step,
                 "elapsed": elapsed, "model": net.state_dict(), "ema": ema.state_dict(),
                 "optimizer": optimizers[0].state_dict(), "config": to_yaml(cfg)}
        atomic_save(state, ckpt)
        return state

    last_save = time.time()
    net.train()
    while progress() < 1.0:
        t0 = time.time()
        batch = adapter.collate([data[i] for i in order.indices(step)])
        torch.manual_seed(step_seed(t.seed, step, 0))
        batch = adapter.augment(batch.to(device), torch.Generator().manual_seed(step_seed(t.seed, step, 0)))
        for g in optimizers[0].param_groups:
            g["lr"] = lr_at(progress(), step, base_lr, o)
        loss = flow_objective(net, batch.data["images"] * 2 - 1, batch.cond, cfg.flow, adapter.num_classes)
        optimizers[0].zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip or float("inf"))
        if bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)):  # a non-finite step changes nothing
            optimizers[0].step()
            ema.update(net)
        elapsed += time.time() - t0
        step += 1
        if time.time() - last_save >= 60 * t.ckpt_every_minutes:
            save()
            last_save = time.time()
    return save()


@torch.no_grad()
def sample_peer(net: PixelFlowNet, adapter: Any, scfg: SampleConfig, flow: FlowConfig,
                num: int) -> tuple[list[Any], dict[str, Any]]:
    """``num`` class-balanced images (label ``i % classes``) with UNITE's sampler; the samples (the
    adapter's :class:`ImageSample`) and the sampling settings."""
    from unite_sci_modalities.images.adapter import ImageSample
    from unite_sci_modalities.images.io import to_uint8

    net.eval()
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(scfg.seed)
    labels = torch.arange(num) % adapter.num_classes
    shift = flow.shift if scfg.shift is None else scfg.shift
    side, out, nfe, t0 = adapter.cfg.image_size, [], 0, time.time()
    for lo in range(0, num, scfg.batch_size):
        y = labels[lo:lo + scfg.batch_size]
        noise = scfg.temperature * torch.randn(len(y), adapter.channels, side, side, generator=gen)
        x, nfe = sample_latents(net, noise.to(device), cond=y.to(device), null=adapter.num_classes,
                                solver=scfg.solver, steps=scfg.steps, shift=shift, clamp=flow.clamp, cfg=scfg.cfg,
                                cfg_interval=tuple(scfg.cfg_interval), atol=scfg.atol, rtol=scfg.rtol,
                                final_euler=scfg.final_euler)  # (B, C, H, W) in [-1, 1] units
        out.extend(ImageSample(im, int(c)) for im, c in zip(to_uint8((x + 1) / 2), y.tolist()))
    wall = time.time() - t0
    info = {"num_samples": num, "solver": scfg.solver, "steps": scfg.steps, "final_euler": scfg.final_euler,
            "temperature": scfg.temperature, "time_shift": shift, "cfg_scale": scfg.cfg,
            "cfg_interval": list(scfg.cfg_interval), "seed": scfg.seed, "nfe_per_batch": nfe,
            "sampling_wall_s": round(wall, 2), "samples_per_s": round(num / max(wall, 1e-9), 2)}
    return out, info


def parse_channels(args: str) -> tuple[int, ...]:
    """``"16,32,32"`` -> (16, 32, 32); empty: :data:`CHANNELS`."""
    if not args:
        return CHANNELS
    try:
        channels = tuple(int(c) for c in args.split(","))
    except ValueError:
        raise UserError(f"peer channels must be integers separated by commas, got {args!r}") from None
    if any(c < 1 for c in channels) or any(c % min(8, min(channels)) for c in channels):
        raise UserError(f"peer channels {args!r}: each must be positive and a multiple of min(8, smallest)")
    return channels


def run_job(modality: str, run: Path, budget_minutes: float, steps: int, num: int, overrides: list[str],
            args: str = "") -> dict[str, Any]:
    """Train (unless done), sample and score the peer for one study job; ``overrides`` are the run-config
    words of the job (the image config's flow, optim, train, sample and data settings apply); ``args`` the
    UNet's ``block_out_channels`` as ``"16,32,32"``. Returns (and writes) ``<run>/eval/results.json``."""
    if modality != "images":
        raise UserError(f"the pixel-space peer draws images; it cannot run for modality {modality!r}")
    channels = parse_channels(args)
    cfg = load_config("images", overrides=list(overrides) + [f"out={run}", *limit_overrides(budget_minutes, steps)])
    adapter = make_adapter(cfg)
    net = make_net(cfg, adapter, channels)
    ckpt = run / "peer" / "last.pt"
    state = (load_checkpoint(ckpt) if limit_reached(ckpt, budget_minutes, steps)
             else train_peer(cfg, adapter, net, ckpt, channels))
    net.load_state_dict(state["model"])
    if cfg.sample.use_ema:  # as load_model: the averaged parameters over the raw ones
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(state["ema"][name])
    samples, info = sample_peer(net, adapter, cfg.sample, cfg.flow, num)
    files = adapter.export(samples, run / "eval" / "samples")
    t0 = time.time()
    gen = adapter.evaluate(samples, str(run / "eval" / "per_sample.csv"))
    result = {"modality": "images", "method": NAME, "generation": gen, "reconstruction": {}, "reconstruction_num": 0,
              "sampling": info, "evaluation_wall_s": {"generation": round(time.time() - t0, 1)},
              "train_steps": int(state["step"]), "train_wall_s": round(float(state["elapsed"]), 1),
              "ema": cfg.sample.use_ema, "checkpoint": str(ckpt),
              "model": {"peer": NAME, "diffusers": version("diffusers"), "block_out_channels": list(channels),
                        "parameters": sum(p.numel() for p in net.parameters()), "prediction": net.prediction},
              "sample_files": [str(f) for f in files], **provenance(), "config": to_yaml(cfg)}
    write_json(result, run / "eval" / "results.json")
    return result
