"""Configuration: dataclasses are the schema, YAML files are data, ``key=value`` overrides come last.

Every default is the paper's value (SPEC) unless it is a CPU convenience, which says so. A modality
adds its own schema under ``data`` (the adapter's ``config_class``). Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError` naming the key. Choices and ranges are declared on the fields
and checked by one walker (``schema.py``), which benchmarks' own options go through too (:func:`parse_options`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError
from .schema import Choice, check, field_types, non_negative, positive, ranged, unit_interval

T = TypeVar("T")


class NoiseMode(Choice):
    interpolate = "interpolate"
    additive = "additive"
    none = "none"


class Prediction(Choice):
    x = "x"          # the network's output is the clean latent (the paper)
    velocity = "velocity"  # x1_hat = x_t + (1 - t) F: the output is a velocity, the input passes through


class OptimName(Choice):
    adamw = "adamw"
    muon = "muon"


class BudgetClock(Choice):
    wall = "wall"    # wall-clock seconds of the training steps
    cpu = "cpu"      # CPU seconds of this process (all its threads): equal compute on a shared, loaded machine


class Schedule(Choice):
    cosine = "cosine"
    constant = "constant"


class TrainMode(Choice):
    single_stage = "single_stage"
    two_stage = "two_stage"


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"


class ScalarEmbedding(Choice):
    linear = "linear"    # v w + b, w ~ N(0, 0.02): the value's path starts as small as a class label's row
    fourier = "fourier"  # [sin, cos](2 pi v W), W ~ N(0, 1) frozen, then a Xavier Linear: full scale from the start


class Solver(Choice):
    euler = "euler"
    heun = "heun"
    dopri5 = "dopri5"


@dataclass
class ModelConfig:
    preset: str = "tiny"                # tiny/small (CPU, this toolkit's) or S/B/L/XL (paper)
    depth: Optional[int] = None         # None: take it from the preset
    width: Optional[int] = None
    heads: Optional[int] = None
    dec_depth: Optional[int] = None
    dec_width: Optional[int] = None
    dec_heads: Optional[int] = None
    latent_dim: int = positive(16)      # C: channels per register (paper: 16 atoms, 32 images)
    mlp_ratio: float = 4.0
    time_freqs: int = 256
    rope_theta: float = 10000.0
    in_context_tokens: int = non_negative(0)  # public image code: 32 copies of the condition from block 4
    in_context_start: int = 4
    shared_weights: bool = True         # ablation: False = separate encoder and denoiser
    scalar_embedding: ScalarEmbedding = ScalarEmbedding.linear  # how a scalar condition (a property) enters c

    def constraints(self) -> Iterator[tuple[str, str]]:
        from .model import PRESETS  # the model module loads torch: not needed to read a config

        if self.preset not in PRESETS:
            yield "preset", f"{self.preset!r} is not one of {', '.join(PRESETS)}"


@dataclass
class FlowConfig:
    shift: float = positive(0.5)        # a in t' = a t / (1 + (a - 1) t)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    clamp: float = positive(0.05)       # max(1 - t, clamp) in velocity and loss weight
    flow_batches: int = positive(1)     # K flow passes per step (paper 14; 1-3 on CPU)
    stop_gradient: bool = True          # ablation: False lets the flow loss shape z0
    label_dropout: float = unit_interval(0.1)
    tokenize_t_max: float = unit_interval(0.01)  # tokenize mode uses t ~ U[0, tokenize_t_max]
    prediction: Prediction = Prediction.x  # x (paper) | velocity: near t = 1 an x-prediction must copy its
                                        # input to the decoder's precision; a velocity output only corrects it
    loss_warmup_steps: int = non_negative(0)  # 0 (paper): the flow loss at full weight from the first step; n > 0:
                                        # its weight ramps linearly 0 -> 1 over the first n single-stage steps, so the
                                        # denoising objective cannot take the shared weights before the tokenizer
                                        # encodes anything (the paper's "conservative optimization" point)
    self_condition: float = unit_interval(0.0)  # probability of self-conditioning a flow pass on its own detached
                                        # x-prediction (ADiT: 0.5); > 0 adds the input projection to the GE


@dataclass
class DecoderNoiseConfig:
    mode: NoiseMode = NoiseMode.interpolate  # interpolate (public code) | additive (paper text) | none
    prob: float = unit_interval(0.5)
    t_min: float = unit_interval(0.7)   # interpolate: z <- t z + (1 - t) eps, t ~ U[t_min, 1]
    sigma: float = 0.7                  # additive: z <- z + sigma eps


@dataclass
class OptimConfig:
    name: OptimName = OptimName.adamw   # adamw | muon (Muon on 2-D block weights, AdamW on the rest)
    lr: float = non_negative(1e-4)
    lr_reference_batch: int = 0         # >0: lr scaled by batch / reference (paper: 384)
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.cosine  # cosine | constant (after warmup)
    warmup_steps: int = non_negative(100)
    min_lr: float = 1e-6
    grad_clip: float = non_negative(3.0)  # global gradient-norm clip; 0 = off
    ema_decay: float = ranged(0.9978, lo=0, hi=1, open_lo=True)
    ema_warmup: bool = True             # decay min(ema_decay, (1+n)/(10+n)): short runs forget the init


@dataclass
class TrainConfig:
    mode: TrainMode = TrainMode.single_stage  # single_stage (UNITE) | two_stage (tokenizer, then denoiser)
    tokenizer_fraction: float = unit_interval(0.5)  # two_stage: share of the budget spent on the tokenizer
    batch_size: int = positive(64)
    max_steps: int = non_negative(0)    # 0: no step limit (then budget_minutes must be set)
    budget_minutes: float = non_negative(0.0)  # 0: no time limit
    budget_clock: BudgetClock = BudgetClock.wall  # what budget_minutes counts: wall | cpu (this process's CPU
                                        # seconds: side-by-side comparisons on a machine that others load)
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    precision: Precision = Precision.fp32  # fp32 | bf16 (autocast)
    compile: Optional[bool] = None      # torch.compile the training forward (fuses element-wise ops). null
                                        # (auto): on for runs that repay the first compile (budget >= 10
                                        # min, or >= 2,000 steps), when a compiler is found. The compiled
                                        # graphs are cached in <cache root>/torch-compile
                                        # (~/.cache/unite-sci/torch-compile; $TORCHINDUCTOR_CACHE_DIR wins)
    threads: int = non_negative(0)      # CPU threads for torch; 0 = all cores
    num_workers: int = non_negative(0)  # data-loading processes
    bucket_batches: int = non_negative(0)  # >1: sort runs of this many batches by item size (less padding)
    log_every: int = positive(25)
    ckpt_every: int = positive(1000)    # steps
    ckpt_every_minutes: float = 5.0
    keep_checkpoints: int = positive(3)
    max_nonfinite: int = positive(20)   # abort after this many non-finite steps in a row
    progress: bool = True
    deterministic: bool = True          # CPU: torch.use_deterministic_algorithms, so runs and resumes are bit
                                        # for bit equal under load (issue #12 saw 2 threads on a busy CPU differ
                                        # by ~1e-6 without it; not reproduced here); ignored on GPUs. Speed cost
                                        # on a loaded 2-core machine, 60 s runs of the tiny preset: within noise
    sample_every: int = non_negative(0)  # >0: every n steps, sample with the EMA weights and log the
                                        # adapter's quick_metrics (rank 0; its time is logged as sample_wall_s
                                        # and not counted in budget_minutes)
    sample_num: int = positive(200)     # samples per such check
    sample_steps: int = non_negative(0)  # solver steps of those samples; 0: sample.steps
    tensorboard: bool = True            # also write TensorBoard events to <out>/tb/ (scalars, sample metrics
                                        # and pictures); metrics.jsonl and train.log are always written


@dataclass
class SampleConfig:
    solver: Solver = Solver.heun        # euler | heun | dopri5
    steps: int = positive(50)
    final_euler: bool = False           # heun: false = Heun to t = 1 as well (the paper: 50 steps = 100 NFE);
                                        # true = the last step is Euler, as JiT's public code does (99 NFE)
    cfg: float = 1.0                    # guidance scale w; 1 = no guidance
    cfg_interval: list = field(default_factory=lambda: [0.1, 1.0])
    atol: float = 1e-6
    rtol: float = 1e-3
    num: int = positive(1000)
    batch_size: int = positive(500)
    seed: int = 0
    use_ema: bool = True
    temperature: float = positive(1.0)  # scale of the starting noise: 1 samples the model's distribution; < 1
                                        # trades diversity for quality (recorded with every sample set)
    shift: Optional[float] = positive(None)  # time shift of the sampler's grid; None: the training flow.shift
    beside_temperatures: list = field(default_factory=list)  # benchmarks also sample and score at each of these
                                        # temperatures, as named rows beside the headline (never instead of it)


@dataclass
class InitFromConfig:
    """The parent of a fine-tuned run (``unite-sci train --init-from``, :mod:`unite_sci.finetune`); a run from
    scratch leaves ``source`` empty. Only ``source`` is the user's: the rest is recorded when the run starts."""

    source: str = ""                    # a shipped model's name or a checkpoint's path, as given
    sha256: str = ""                    # of the parent's file
    steps: int = 0                      # the parent's training steps
    modality: str = ""                  # the parent's modality (may differ from the run's)


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
    init_from: InitFromConfig = field(default_factory=InitFromConfig)
    data: Any = None                    # the adapter's own dataclass

    def constraints(self) -> Iterator[tuple[str, str]]:
        lo, hi = self.sample.cfg_interval
        if not 0.0 <= lo <= hi <= 1.0:
            yield "sample.cfg_interval", f"need 0 <= lo <= hi <= 1, got {[lo, hi]}"
        if self.train.mode == "two_stage" and self.model.shared_weights:
            yield "model.shared_weights", ("two_stage training needs a separate denoiser, set "
                                           "model.shared_weights=false")


def validate(cfg: RunConfig) -> None:
    """Check every rule declared on the schema (choices, ranges, ``constraints()``), the adapter's ``data``
    section included; the first broken one is a ConfigError naming its key."""
    check(cfg)


def build_config(modality: str, data_schema: type, files: Sequence[str | Path | dict] = (),
                 overrides: list[str] = ()) -> RunConfig:
    """Schema defaults <- YAML files (in order; a dict stands for a file's contents) <- ``key=value``
    overrides; validated.

    Raises ConfigError naming the key for unknown keys, wrong types and bad values.
    """
    base = OmegaConf.structured(RunConfig(modality=modality))
    base.data = OmegaConf.structured(data_schema())
    where = "config could not be read"
    try:
        merged: DictConfig = base
        for f in files:
            if isinstance(f, dict):  # an adapter's shipped defaults, given as a class attribute
                where = f"default_config of modality {modality!r}"
                merged = OmegaConf.merge(merged, OmegaConf.create(f))
                continue
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
        raise _refusal(e, where) from None
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


def parse_options(schema: type[T], words: Sequence[str], what: str = "benchmark option") -> tuple[T, list[str]]:
    """A benchmark's ``key=value`` words: dot-less keys fill ``schema`` (a dataclass of options, merged and
    checked as the run config is, with the same one-line refusals); dotted keys are run-config overrides,
    returned as given for :func:`build_config`.

    A list option takes comma-separated values (``seeds=0,1``, ``eval=`` for none) or a YAML list.
    """
    bad = [w for w in words if "=" not in w]
    if bad:
        raise ConfigError(f"{what} {bad[0]!r} is not of the form key=value")
    hints = field_types(schema)
    dotlist = []
    for word in words:
        key, value = word.split("=", 1)
        if "." not in key:
            listed = typing.get_origin(hints.get(key)) is list and not value.startswith("[")
            dotlist.append(f"{key}=[{value}]" if listed else word)
    try:
        opts = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(dotlist)))
    except OmegaConfBaseException as e:
        raise _refusal(e, "", what) from None
    check(opts, what)
    return opts, [w for w in words if "." in w.split("=", 1)[0]]


def _refusal(e: OmegaConfBaseException, where: str, what: str = "config key") -> ConfigError:
    """omegaconf's error as one line naming the key; an unknown key also lists the valid ones."""
    key = getattr(e, "full_key", None)
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    owner = getattr(e, "object_type", None)
    if isinstance(e, ConfigKeyError) and dataclasses.is_dataclass(owner):
        msg = f"unknown, valid: {', '.join(f.name for f in dataclasses.fields(owner))}"
    if not key:
        return ConfigError(f"{where or what}: {msg}")
    return ConfigError(f"{what} '{key}': {msg}" + (f" ({where})" if where else ""))


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
