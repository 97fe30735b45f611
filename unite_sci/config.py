"""Configuration: dataclasses are the schema, YAML files are data, ``key=value`` overrides come last.

Every default is the paper's value (SPEC) unless it is a CPU convenience, which says so. A modality
adds its own schema under ``data`` (the adapter's ``config_class``). Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


@dataclass
class ModelConfig:
    preset: str = "tiny"                # tiny/small (CPU, this toolkit's) or S/B/L/XL (paper)
    depth: Optional[int] = None         # None: take it from the preset
    width: Optional[int] = None
    heads: Optional[int] = None
    dec_depth: Optional[int] = None
    dec_width: Optional[int] = None
    dec_heads: Optional[int] = None
    latent_dim: int = 16                # C: channels per register (paper: 16 atoms, 32 images)
    mlp_ratio: float = 4.0
    time_freqs: int = 256
    rope_theta: float = 10000.0
    in_context_tokens: int = 0          # public image code: 32 copies of the condition from block 4
    in_context_start: int = 4
    shared_weights: bool = True         # ablation: False = separate encoder and denoiser


@dataclass
class FlowConfig:
    shift: float = 0.5                  # a in t' = a t / (1 + (a - 1) t)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    clamp: float = 0.05                 # max(1 - t, clamp) in velocity and loss weight
    flow_batches: int = 1               # K flow passes per step (paper 14; 1-3 on CPU)
    stop_gradient: bool = True          # ablation: False lets the flow loss shape z0
    label_dropout: float = 0.1
    tokenize_t_max: float = 0.01        # tokenize mode uses t ~ U[0, tokenize_t_max]
    self_condition: float = 0.0         # probability of self-conditioning a flow pass on its own detached
                                        # x-prediction (ADiT: 0.5); > 0 adds the input projection to the GE


@dataclass
class DecoderNoiseConfig:
    mode: str = "interpolate"           # interpolate (public code) | additive (paper text) | none
    prob: float = 0.5
    t_min: float = 0.7                  # interpolate: z <- t z + (1 - t) eps, t ~ U[t_min, 1]
    sigma: float = 0.7                  # additive: z <- z + sigma eps


@dataclass
class OptimConfig:
    name: str = "adamw"                 # adamw | muon (Muon on 2-D block weights, AdamW on the rest)
    lr: float = 1e-4
    lr_reference_batch: int = 0         # >0: lr scaled by batch / reference (paper: 384)
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: str = "cosine"            # cosine | constant (after warmup)
    warmup_steps: int = 100
    min_lr: float = 1e-6
    grad_clip: float = 3.0              # global gradient-norm clip; 0 = off
    ema_decay: float = 0.9978
    ema_warmup: bool = True             # decay min(ema_decay, (1+n)/(10+n)): short runs forget the init


@dataclass
class TrainConfig:
    mode: str = "single_stage"          # single_stage (UNITE) | two_stage (tokenizer, then denoiser)
    tokenizer_fraction: float = 0.5     # two_stage: share of the budget spent on the tokenizer
    batch_size: int = 64
    max_steps: int = 0                  # 0: no step limit (then budget_minutes must be set)
    budget_minutes: float = 0.0         # 0: no time limit
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    precision: str = "fp32"             # fp32 | bf16 (autocast)
    compile: bool = False               # torch.compile the training forward (fuses element-wise ops)
    threads: int = 0                    # CPU threads for torch; 0 = all cores
    num_workers: int = 0                # data-loading processes
    bucket_batches: int = 0             # >1: sort runs of this many batches by item size (less padding)
    log_every: int = 25
    ckpt_every: int = 1000              # steps
    ckpt_every_minutes: float = 5.0
    keep_checkpoints: int = 3
    max_nonfinite: int = 20             # abort after this many non-finite steps in a row
    progress: bool = True
    sample_every: int = 0               # >0: every n steps, sample with the EMA weights and log the
                                        # adapter's quick_metrics (rank 0; counts toward budget_minutes)
    sample_num: int = 200               # samples per such check
    sample_steps: int = 0               # solver steps of those samples; 0: sample.steps


@dataclass
class SampleConfig:
    solver: str = "heun"                # euler | heun | dopri5
    steps: int = 50
    cfg: float = 1.0                    # guidance scale w; 1 = no guidance
    cfg_interval: list = field(default_factory=lambda: [0.1, 1.0])
    atol: float = 1e-6
    rtol: float = 1e-3
    num: int = 1000
    batch_size: int = 500
    seed: int = 0
    use_ema: bool = True
    shift: Optional[float] = None       # time shift of the sampler's grid; None: the training flow.shift


@dataclass
class RunConfig:
    modality: str = "toy"
    out: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    decoder_noise: DecoderNoiseConfig = field(default_factory=DecoderNoiseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: Any = None                    # the adapter's own dataclass


CHOICES = {
    "decoder_noise.mode": ("interpolate", "additive", "none"),
    "optim.name": ("adamw", "muon"),
    "optim.schedule": ("cosine", "constant"),
    "train.mode": ("single_stage", "two_stage"),
    "train.precision": ("fp32", "bf16"),
    "sample.solver": ("euler", "heun", "dopri5"),
}
POSITIVE = ("flow.flow_batches", "train.batch_size", "sample.steps", "sample.num", "sample.batch_size",
            "model.latent_dim", "flow.clamp", "flow.shift", "optim.ema_decay", "train.log_every",
            "train.ckpt_every", "train.keep_checkpoints", "train.max_nonfinite", "train.sample_num")
NON_NEGATIVE = ("train.max_steps", "train.budget_minutes", "optim.lr", "optim.warmup_steps",
                "optim.grad_clip", "train.threads", "train.num_workers", "train.bucket_batches",
                "model.in_context_tokens", "train.sample_every", "train.sample_steps")
UNIT_INTERVAL = ("flow.label_dropout", "decoder_noise.prob", "decoder_noise.t_min",
                 "train.tokenizer_fraction", "optim.ema_decay", "flow.tokenize_t_max", "flow.self_condition")


def _get(cfg: RunConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _floats(node: Any, key: str = "") -> list[tuple[str, float]]:
    """Every float setting (nested dataclasses, lists and tuples included) as (dotted key, value)."""
    if dataclasses.is_dataclass(node):
        return [kv for f in dataclasses.fields(node)
                for kv in _floats(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)]
    if isinstance(node, (list, tuple)):
        return [kv for i, v in enumerate(node) for kv in _floats(v, f"{key}[{i}]")]
    return [(key, node)] if isinstance(node, float) else []


def validate(cfg: RunConfig) -> None:
    """Range and choice checks that a type schema cannot express."""
    from .model import PRESETS

    for key, value in _floats(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value}")
    for key, choices in CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"config key '{key}': {_get(cfg, key)!r} is not one of {', '.join(choices)}")
    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"config key 'model.preset': {cfg.model.preset!r} is not one of {', '.join(PRESETS)}")
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {_get(cfg, key)}")
    for key in NON_NEGATIVE:
        if not _get(cfg, key) >= 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {_get(cfg, key)}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"config key '{key}': must lie in [0, 1], got {_get(cfg, key)}")
    if cfg.sample.shift is not None and not cfg.sample.shift > 0:
        raise ConfigError(f"config key 'sample.shift': must be > 0, got {cfg.sample.shift}")
    lo, hi = cfg.sample.cfg_interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"config key 'sample.cfg_interval': need 0 <= lo <= hi <= 1, got {[lo, hi]}")
    if cfg.train.mode == "two_stage" and cfg.model.shared_weights:
        raise ConfigError("config key 'model.shared_weights': two_stage training needs a separate "
                          "denoiser, set model.shared_weights=false")
    if hasattr(cfg.data, "validate"):
        cfg.data.validate()


def build_config(modality: str, data_schema: type, files: list[str | Path] = (),
                 overrides: list[str] = ()) -> RunConfig:
    """Schema defaults <- YAML files (in order) <- ``key=value`` overrides; validated.

    Raises ConfigError naming the key for unknown keys, wrong types and bad values.
    """
    base = OmegaConf.structured(RunConfig(modality=modality))
    base.data = OmegaConf.structured(data_schema())
    where = "config could not be read"
    try:
        merged: DictConfig = base
        for f in files:
            path = Path(f)
            if not path.is_file():
                raise ConfigError(f"config file '{path}' does not exist")
            where = f"config file '{path}' could not be read"
            loaded = OmegaConf.load(path)
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"config file '{path}' is not a mapping of keys")
            where = f"config file '{path}'"
            merged = OmegaConf.merge(merged, loaded)
        where = "config overrides"
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: RunConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        raise ConfigError(f"config key '{key}': {msg} ({where})" if key else f"{where}: {msg}") from None
    except Exception as e:  # yaml syntax errors and bad encodings carry no key: name the file
        if isinstance(e, ConfigError):
            raise
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{where}: {first} (not UTF-8 YAML?)" if isinstance(e, UnicodeDecodeError)
                          else f"{where}: {first}") from None
    if cfg.modality != modality:
        raise ConfigError(f"config key 'modality': the file says {cfg.modality!r}, the command {modality!r}")
    validate(cfg)
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str, data_schema: type) -> RunConfig:
    """Rebuild a saved config (checkpoints store the resolved YAML)."""
    loaded = OmegaConf.create(text)
    return build_config_from_node(loaded, data_schema)


def build_config_from_node(node: DictConfig, data_schema: type) -> RunConfig:
    base = OmegaConf.structured(RunConfig(modality=str(node.get("modality", "toy"))))
    base.data = OmegaConf.structured(data_schema())
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, node))
    except OmegaConfBaseException as e:
        raise ConfigError(f"saved config key '{getattr(e, 'full_key', '?')}': "
                          f"{str(getattr(e, 'msg', e)).splitlines()[0]}") from None
