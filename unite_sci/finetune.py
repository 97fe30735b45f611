"""Fine-tuning: a run that starts from a trained model (``unite-sci train --init-from NAME_OR_CHECKPOINT``).

    cfg = load_config(MODALITY, overrides=["data.data_dir=my_data", "init_from.source=SHIPPED_NAME", ...])
    summary = train(cfg)       # engine.train: child_config, then inherit_weights before the first step

What the child takes from its parent (a shipped model by name, or any checkpoint):

* the architecture: the parent's ``model.*`` section replaces the run's; a ``model.*`` key the user set to
  another value is a one-line error naming it (:func:`child_config`);
* the weights, and only them: the parent's sampling weights (its EMA, as a shipped model holds them), with a
  fresh optimiser, the learning-rate warm-up of ``optim.warmup_steps`` and an EMA that starts at the parent's
  weights (:func:`inherit_weights`).

The data may differ from the parent's, and each parameter is matched by name:

* rows of an adapter's type tables (element embeddings, the decoder's type head) follow the adapter's
  ``inherit_rows(parent_data, parent_adapter_state) -> {parameter name: [parent row or -1 per row]}`` hook,
  which matches types by identity (an atomic number), so the parent's rows are kept wherever they sit in the
  new table; a -1 row (a type the parent never saw) keeps the fresh initialisation of a model from scratch;
* the class table: the parent's class rows by index, its null row to the new null index; a class the parent
  lacked starts as the null row, so it changes nothing at step 0;
* a table that only grew (register positions of larger items): its leading rows are the parent's;
* a parameter the parent lacks (a new condition's embedders, ``data.condition_on=[...]``): fresh, with the
  output projection that adds a condition's vector to the time/class vector set to zero, so the child equals
  its parent at step 0 (the adapter idea of MatterGen, Zeni et al. 2025); it trains with the usual
  ``flow.label_dropout``, so guidance works. A token-set condition's tokens also join the sequence when given:
  such a child equals its parent at step 0 only where the condition is dropped;
* any other shape difference is a one-line error naming the parameter.

The parent's source, sha256, steps and modality are written to the run's ``init_from`` config section, which
every checkpoint stores and ``unite-sci ship`` copies into the card's ``parent``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from .checkpoint import load_checkpoint
from .config import InitFromConfig, ModelConfig, RunConfig, validate
from .errors import UserError
from .files import file_hash
from .optim import EMA
from .shipped import looks_like_name, resolve, sampling_state

CLASS_TABLE = ".y_embed.table.weight"  # the core's class table (GenerativeEncoder.y_embed): null row last


@dataclass(frozen=True)
class Parent:
    """A model to start from: its facts, config and the weights it samples with."""

    source: str  # as the user gave it
    path: Path
    sha256: str
    steps: int
    modality: str
    config: dict[str, Any]  # the parent's resolved run config
    weights: dict[str, torch.Tensor]  # parameter name -> its sampling (EMA) value
    adapter_state: dict[str, Any] = field(default_factory=dict)

    def record(self) -> InitFromConfig:
        return InitFromConfig(source=self.source, sha256=self.sha256, steps=self.steps, modality=self.modality)


def load_parent(source: str) -> Parent:
    """A shipped model by name (its sha256 checked against its card) or a checkpoint file; UserError in one
    line when it is neither."""
    path = Path(source)
    if not path.exists() and looks_like_name(source):
        path = resolve(source)
    state = load_checkpoint(path)
    # a training checkpoint carries its EMA beside the raw weights; a shipped one holds the EMA already
    weights = sampling_state(state)[0]["model"] if "ema" in state else state["model"]
    return Parent(source=source, path=path, sha256=file_hash(path), steps=int(state["step"]),
                  modality=str(state["modality"]), config=yaml.safe_load(state["config"]),
                  weights={k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                  adapter_state=state.get("adapter_state") or {})


def model_keys(config_file: str | None, overrides: Iterable[str]) -> set[str]:
    """The ``model.*`` keys a user set on the command line or in their own config file (not the modality's
    defaults, which a parent's architecture replaces without a word)."""
    keys = {w.split("=", 1)[0][len("model."):] for w in overrides if w.startswith("model.") and "=" in w}
    if config_file:
        loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        keys |= set((loaded.get("model") or {}) if isinstance(loaded, dict) else {})
    return keys


CHILD_KEYS = {"scalar_embedding"}  # model keys that shape only modules a parent without scalar conditions lacks


def child_config(cfg: RunConfig, parent: Parent, given: Iterable[str] = ()) -> RunConfig:
    """``cfg`` with the parent's ``model`` section and the parent's facts in ``init_from``.

    ``given``: the ``model.*`` keys (without the prefix) the user set; one set to a value other than the
    parent's is refused, naming it."""
    theirs = dict(parent.config.get("model") or {})
    mine = OmegaConf.to_container(OmegaConf.structured(cfg.model))
    for key in set(given) & CHILD_KEYS:
        if not any(".conditions.scalars." in n for n in parent.weights):  # no scalar condition in the parent:
            theirs[key] = mine[key]  # how a new one is embedded is the child's choice
        else:
            theirs.setdefault(key, ModelConfig.scalar_embedding.value)  # a parent older than the key: linear
    for key in sorted(given):
        if key in theirs and mine.get(key) != theirs[key]:
            raise UserError(f"model.{key}={mine.get(key)} conflicts with the parent {parent.source!r} "
                            f"(model.{key}={theirs[key]}): a fine-tuned run has its parent's architecture; "
                            f"drop model.{key}")
    try:
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), theirs))
    except Exception as e:  # a key this version does not know
        raise UserError(f"parent {parent.source!r}: its model config cannot be read here ({e})") from None
    child = replace(cfg, model=model, init_from=parent.record())
    validate(child)
    return child


# ----------------------------------------------------------------------------- weights
@dataclass
class Inherited:
    """What :func:`inherit_weights` did, parameter names per kind."""

    copied: list[str] = field(default_factory=list)  # same shape, taken whole
    remapped: list[str] = field(default_factory=list)  # type or class rows matched by identity
    grown: list[str] = field(default_factory=list)  # leading rows taken, the rest fresh
    new: list[str] = field(default_factory=list)  # not in the parent: fresh (condition outputs zeroed)
    new_rows: int = 0  # rows of remapped tables that start fresh (types or classes the parent lacked)

    def line(self, parent: Parent) -> str:
        return (f"init-from {parent.source} ({parent.modality}, {parent.steps} steps, sha256 {parent.sha256[:12]}): "
                f"{len(self.copied)} tensors copied, {len(self.remapped)} remapped ({self.new_rows} new rows), "
                f"{len(self.grown)} grown, {len(self.new)} new"
                + (f" ({', '.join(sorted({n.rsplit('.', 1)[0] for n in self.new})[:4])})" if self.new else ""))


def _rows(own: torch.Tensor, theirs: torch.Tensor, index: list[int], name: str) -> torch.Tensor:
    """Rows of ``own`` replaced by the parent's row ``index[i]`` where it is >= 0."""
    if len(index) != own.shape[0] or own.shape[1:] != theirs.shape[1:] or max(index, default=-1) >= theirs.shape[0]:
        raise UserError(f"parameter {name}: the adapter's row map ({len(index)} rows) does not fit the parent's "
                        f"{tuple(theirs.shape)} or the run's {tuple(own.shape)}")
    out = own.clone()
    for i, j in enumerate(index):
        if j >= 0:
            out[i] = theirs[j]
    return out


def _class_rows(own: torch.Tensor, theirs: torch.Tensor) -> list[int]:
    """Class table rows: classes by index, null (last) to null, a class the parent lacked to its null row."""
    n_own, n_theirs = own.shape[0] - 1, theirs.shape[0] - 1
    return [i if i < n_theirs else n_theirs for i in range(n_own)] + [n_theirs]


def zero_condition_outputs(module: nn.Module, new: set[str]) -> None:
    """Close every new condition embedder's contribution to the time/class vector: the last Linear of a scalar
    embedder's MLP, and a token set's summary and null vector (duck-typed: ``scalars`` / ``tokens`` members
    of a :class:`~unite_sci.conditions.ConditionEncoder`)."""
    from .conditions import ScalarEmbedder, TokenCondition

    with torch.no_grad():
        for name, m in module.named_modules():
            params = {f"{name}.{k}" for k, _ in m.named_parameters()}
            if not params or not params <= new:
                continue
            if isinstance(m, ScalarEmbedder):
                nn.init.zeros_(m.mlp[-1].weight)
                nn.init.zeros_(m.mlp[-1].bias)
            elif isinstance(m, TokenCondition):
                nn.init.zeros_(m.summary.weight)
                nn.init.zeros_(m.summary.bias)
                nn.init.zeros_(m.null)


def inherit_weights(model: nn.Module, adapter: Any, parent: Parent, ema: EMA | None = None) -> Inherited:
    """Load the parent's weights into a freshly built ``model`` (see the module docstring for the rules);
    with ``ema``, the average restarts at the loaded weights. Returns what was done."""
    hook = getattr(adapter, "inherit_rows", None)
    row_maps = hook(parent.config.get("data") or {}, parent.adapter_state) if hook is not None else {}
    own, theirs, done = model.state_dict(), parent.weights, Inherited()
    loaded: dict[str, torch.Tensor] = {}
    for name, value in own.items():
        if name not in theirs:
            done.new.append(name)
            continue
        old = theirs[name]
        is_class = name.endswith(CLASS_TABLE) and name not in row_maps
        index = _class_rows(value, old) if is_class else row_maps.get(name)
        if index is not None:
            loaded[name] = _rows(value, old.to(value.dtype), list(index), name)
            done.remapped.append(name)
            done.new_rows += max(0, value.shape[0] - old.shape[0]) if is_class else sum(j < 0 for j in index)
        elif old.shape == value.shape:
            loaded[name] = old.to(value.dtype)
            done.copied.append(name)
        elif value.dim() and old.shape[1:] == value.shape[1:]:
            n = min(old.shape[0], value.shape[0])
            loaded[name] = torch.cat([old[:n].to(value.dtype), value[n:]])
            done.grown.append(name)
        else:
            raise UserError(f"parameter {name} has shape {tuple(old.shape)} in the parent {parent.source!r} "
                            f"({parent.modality}) and {tuple(value.shape)} here: not a model to fine-tune from")
    model.load_state_dict(loaded, strict=False)
    zero_condition_outputs(model, set(done.new))
    if ema is not None:
        ema.load_state_dict({**{k: p.detach() for k, p in model.named_parameters()}, "__updates__": torch.tensor(0)})
    return done
