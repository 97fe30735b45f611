"""The modality adapter API: a typed Protocol, the batch it produces, and the registry.

A modality is one small class with the members of :class:`Adapter`. The core trains, samples and
evaluates any class that satisfies it; it never imports a modality. Adapters are found by name in a
registry filled by the :func:`register` decorator, by the ``unite_sci.adapters`` entry-point group
(how this package's own adapters and installed third-party ones are discovered) and by :func:`load_adapter`
(``--adapter package.module:Class`` or ``UNITE_SCI_ADAPTERS``: an importable class, nothing installed).

An adapter package ships its default config as data beside its code (:func:`default_config_source`).

Units, dataset facts (splits, seeds, statistics) and the conversion back to domain objects live in the
adapter and only there.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .errors import UserError
from .model import RegisterLayout

ENTRY_POINT_GROUP = "unite_sci.adapters"
ADAPTERS_ENV = "UNITE_SCI_ADAPTERS"  # comma-separated package.module:Class, loaded like --adapter


@dataclass
class Batch:
    """What an adapter's ``collate`` returns.

    data: the modality's tensors, keyed by name (element-level tensors are (B, N, ...)).
    mask: (B, N) bool, True for real elements; None when every sample has the same N elements.
    cond: (B,) long class labels; unconditional data use the null index (``Adapter.num_classes``).
    conds: the structured conditions the adapter declares (``conditions.py``): ``"scalars"`` (B, P) float
        normalised, NaN = not given; a token set by its name, (B, M) long, -1 = padding. Empty if none.
    """

    data: dict[str, Tensor]
    mask: Tensor | None
    cond: Tensor
    conds: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # an adapter author's slip would otherwise surface steps later as "'NoneType' has no attribute 'to'"
        if not isinstance(self.cond, Tensor):
            raise UserError(f"the adapter's batch has cond={type(self.cond).__name__}, not a (B,) long tensor of "
                            "class labels; unconditional data give the null label: adapter.null_cond(B)")

    def __len__(self) -> int:
        return int(self.cond.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """On ``device``; ``non_blocking`` copies from pinned memory without waiting (CUDA)."""
        move = lambda v: v.to(device, non_blocking=non_blocking)  # noqa: E731
        mask = None if self.mask is None else move(self.mask)
        return Batch({k: move(v) for k, v in self.data.items()}, mask, move(self.cond),
                     {k: move(v) for k, v in self.conds.items()})

    def pin_memory(self) -> "Batch":
        """In page-locked memory (the DataLoader calls this with ``pin_memory=True``)."""
        mask = None if self.mask is None else self.mask.pin_memory()
        return Batch({k: v.pin_memory() for k, v in self.data.items()}, mask, self.cond.pin_memory(),
                     {k: v.pin_memory() for k, v in self.conds.items()})

    def with_data(self, **data: Tensor) -> "Batch":
        """The same batch (mask, labels, conditions) with some data tensors replaced (augmentation)."""
        return Batch(dict(self.data, **data), self.mask, self.cond, self.conds)


@runtime_checkable
class Adapter(Protocol):
    """Everything the core needs from a modality. See ``modalities/toy.py`` for a complete example."""

    name: ClassVar[str]
    config_class: ClassVar[type]       # dataclass: the modality's section ``data`` of the run config
    layout: RegisterLayout             # fixed K registers, or one per element (+ extra)
    num_classes: int                   # 0 for unconditional data

    def build_splits(self) -> dict[str, Dataset]:
        """'train', 'val' and 'test' datasets whose items ``collate`` accepts."""
        ...

    def collate(self, items: list[Any]) -> Batch: ...

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Training-time augmentation (random rotation, translation...); identity if none."""
        ...

    def build_embedder(self, width: int) -> nn.Module:
        """Module ``(data, mask) -> tokens (B, N, width)``."""
        ...

    def build_heads(self, width: int) -> nn.Module:
        """Module ``(hidden (B, K, width), mask) -> dict of outputs`` (the decoder's heads)."""
        ...

    def decoder_positions(self, width: int) -> Tensor | None:
        """Position table (K, width) for the decoder, or None for the default 1-D sin-cos."""
        ...

    def reconstruction_loss(self, out: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Scalar loss and named parts for logging (detached 0-d tensors: a ``float()`` here would make
        the trainer synchronise and break a ``torch.compile`` graph at every step)."""
        ...

    def sample_sizes(self, num: int, generator: torch.Generator) -> Tensor | None:
        """Element counts (num,) for generation (from the training distribution); None if fixed."""
        ...

    def to_domain(self, out: dict[str, Tensor], mask: Tensor | None) -> list[Any]:
        """Decoder outputs -> domain objects in physical units."""
        ...

    def batch_to_domain(self, batch: Batch) -> list[Any]:
        """Ground-truth batch -> the same kind of domain objects (for reconstruction metrics)."""
        ...

    def evaluate(self, samples: list[Any], per_sample_csv: str | None = None) -> dict[str, Any]:
        """Generation metrics, keys prefixed by their protocol name."""
        ...

    def evaluate_reconstruction(self, inputs: list[Any], recons: list[Any]) -> dict[str, Any]: ...

    def quick_metrics(self, samples: list[Any]) -> dict[str, float]:
        """The headline generation metrics, cheap enough to run during training (a few seconds for 200
        samples, in this process, no novelty or matching against the training set); keys as in
        ``evaluate``. The trainer logs them every ``train.sample_every`` steps; {} (the ``AdapterBase``
        default) means the adapter has none, and the trainer then draws no samples."""
        ...

    def export(self, samples: list[Any], out_dir: Path) -> list[Path]:
        """Write samples in the field's formats; returns the files written."""
        ...

    def load_samples(self, path: Path) -> list[Any]:
        """Read samples written by ``export`` (or the field's usual formats)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Data statistics the model needs at sampling time (saved in checkpoints)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def item_sizes(self, dataset: Dataset) -> Any:
        """Elements per item (array (len,)), used to batch similar sizes together; None if fixed."""
        ...


class AdapterBase:
    """Defaults for the optional parts of the Protocol; subclass and override what the domain needs."""

    num_classes: int = 0
    default_config: Any = None  # shipped defaults: a mapping, or a YAML file beside the module (see
                                # default_config_source); None: ``<name>.yaml`` there, if any

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        return batch

    def decoder_positions(self, width: int) -> Tensor | None:
        return None

    def sample_sizes(self, num: int, generator: torch.Generator) -> Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def evaluate_reconstruction(self, inputs: list[Any], recons: list[Any]) -> dict[str, Any]:
        return {}

    def quick_metrics(self, samples: list[Any]) -> dict[str, float]:
        return {}

    def item_sizes(self, dataset: Dataset) -> Any:
        return None

    def null_cond(self, batch_size: int) -> Tensor:
        return torch.full((batch_size,), self.num_classes, dtype=torch.long)

    # structured conditions (``conditions.py``); none by default
    def condition_specs(self) -> list:
        """The ``ConditionSpec`` list this configuration trains with (scalars first, in column order)."""
        return []

    def build_condition_embedders(self, width: int) -> dict[str, nn.Module]:
        """One module ``ids (B, M) >= 0 -> (B, M, width)`` per token condition."""
        return {}

    def draw_conditions(self, num: int, generator: torch.Generator,
                        given: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor | None]:
        """Conditions (num rows) for generation and the element counts they imply (None: draw as usual).

        ``given`` holds the user's values by condition name (physical units, the adapter's spelling); the
        rest are drawn jointly from the training data. An unknown name or a bad value is a ``UserError``."""
        if given:
            raise UserError(f"unknown condition(s) {sorted(given)}: this model takes none")
        return {}, None

    def register_mask(self, conds: dict[str, Tensor]) -> Tensor | None:
        """Which extra registers (``layout.extra``) each sample has, (B, extra) bool, from its conditions;
        None: all of them (a composite of data sets switches a cell register off for molecules)."""
        return None

    def apply_conditions(self, out: dict[str, Tensor], conds: dict[str, Tensor],
                         mask: Tensor | None) -> dict[str, Tensor]:
        """Decoder outputs made to honour conditions that fix parts of the sample (a given composition
        fixes the atom types); identity by default."""
        return out

    def inherit_rows(self, parent_data: dict[str, Any], parent_state: dict[str, Any]) -> dict[str, list[int]]:
        """Fine-tuning (``finetune.py``): parameter name -> the parent's row behind each row of a type table here,
        -1 for a type the parent lacks (it starts fresh), from the parent's data config and adapter state.
        {}: every table is matched by shape alone (a fixed type table, as a periodic table by Z)."""
        return {}

    def condition_metrics(self, samples: list[Any], condition: dict[str, Any]) -> dict[str, float]:
        """How far samples drawn under ``condition`` (the user's ``--condition`` words, as ``sample`` recorded
        them in samples_meta.json) meet it; ``evaluate`` adds these beside the other metrics. {}: nothing to check."""
        return {}

    def export_reconstructions(self, inputs: list[Any], recons: list[Any], out_dir: Path) -> list[Path]:
        """Files of reconstructions (``unite-sci reconstruct``): ``export(recons)``; an adapter whose export
        draws pictures overrides this so that each input is drawn beside its reconstruction."""
        return self.export(recons, out_dir)

    def finish_samples(self, out: dict[str, Tensor], mask: Tensor | None) -> dict[str, Tensor]:
        """Generation only, after :meth:`apply_conditions`: an opt-in, named repair of generated decoder
        outputs (crystals' charge balance). Never applied to reconstructions; identity by default."""
        return out


# ----------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type] = {}
_DISCOVERED = False


def register(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register("points")`` makes the adapter available by that name."""

    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _discover() -> None:
    """Fill the registry from the entry-point group (lazily: importing an adapter can be slow)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _REGISTRY.setdefault(ep.name, ep)  # loaded on first use
    for spec in filter(None, (s.strip() for s in os.environ.get(ADAPTERS_ENV, "").split(","))):
        load_adapter(spec, ADAPTERS_ENV)


def available() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def unknown_modality(name: str, origin: str = "") -> UserError:
    """The one-line refusal for a modality nobody registered: the registered names and how to add one."""
    where = f" (it was trained with adapter {origin})" if origin else ""
    return UserError(f"unknown modality {name!r}{where}; available: {', '.join(available())}; an adapter "
                     f"in another package registers through the entry-point group '{ENTRY_POINT_GROUP}' "
                     f"or loads with --adapter {origin or 'package.module:Class'} (or {ADAPTERS_ENV})")


def class_path(cls: type) -> str:
    """``package.module:Class``, the form --adapter takes (recorded in checkpoints)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def load_adapter(spec: str, what: str = "--adapter") -> type:
    """Import ``package.module:Class`` and register it under its ``name`` (or keep its @register name).

    Nothing is installed: the module must be importable from ``sys.path``; the current folder is tried
    last (as ``python -m`` would), so an adapter beside the user's data works without PYTHONPATH.
    """
    module_name, _, cls_name = spec.partition(":")
    if not module_name or not cls_name:
        raise UserError(f"{what} {spec!r} is not of the form package.module:Class")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{what} {spec!r}: module {module_name!r} cannot be imported ({e})") from None
    cls: Any = module
    for part in cls_name.split("."):
        cls = getattr(cls, part, None)
    if not isinstance(cls, type):
        raise UserError(f"{what} {spec!r}: module {module_name!r} has no class {cls_name!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise UserError(f"{what} {spec!r}: the class has no `name` (decorate it with @register(\"name\") "
                        f"or set the class attribute `name`)")
    _REGISTRY[name] = cls
    return cls


def default_config_source(cls: type) -> Any:
    """The defaults an adapter package ships: its class attribute ``default_config`` (a mapping of config
    keys, or the name of a YAML file beside its module), else ``<name>.yaml`` beside its module if that
    exists; None when there are none. Found through ``importlib.resources`` so an installed (even zipped)
    package works; the file must then be in the package's data."""
    own = getattr(cls, "default_config", None)
    if isinstance(own, dict):
        return own
    module = sys.modules.get(cls.__module__)
    package = getattr(module, "__package__", None)
    if package:
        folder: Any = resources.files(package)
    elif getattr(module, "__file__", None):  # a top-level module: its folder
        folder = Path(module.__file__).parent
    else:
        return None
    if isinstance(own, str):
        if not folder.joinpath(own).is_file():
            raise UserError(f"adapter {class_path(cls)}: default_config file {own!r} is not beside its module")
        return folder.joinpath(own)
    found = folder.joinpath(f"{cls.name}.yaml")
    return found if found.is_file() else None


def get_adapter_class(name: str) -> type:
    """The adapter class registered under ``name``; UserError listing the valid names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise unknown_modality(name)
    entry = _REGISTRY[name]
    if not isinstance(entry, type):
        try:
            cls = entry.load()
        except ImportError as e:
            raise UserError(f"modality {name!r} cannot be imported ({e}); is its extra installed?") from None
        cls.name = name
        _REGISTRY[name] = cls
        entry = cls
    return entry


def has_quick_metrics(adapter: Any) -> bool:
    """Whether ``adapter`` overrides the empty ``AdapterBase.quick_metrics`` (known without sampling)."""
    method = getattr(type(adapter), "quick_metrics", None)
    return method is not None and method is not AdapterBase.quick_metrics


def missing_members(obj: Any) -> Sequence[str]:
    """Protocol members an adapter instance lacks (empty when it conforms)."""
    wanted = [m for m in Adapter.__annotations__] + [
        m for m in dir(Adapter) if not m.startswith("_") and callable(getattr(Adapter, m, None))]
    return [m for m in wanted if not hasattr(obj, m)]


# ----------------------------------------------------------------------------- modules an adapter builds
class FnModule(nn.Module):
    """A function as a module: ``FnModule(fn, *modules)`` calls ``fn(*args)`` and owns ``modules``, so the
    parameters ``fn`` uses are trained and saved. With no modules it declares a deliberately parameter-free
    embedder or head (which the build-time check otherwise refuses).

        lin = nn.Linear(2, width)
        return FnModule(lambda data, mask: lin(data["points"]), lin)   # (B, N, 2) -> (B, N, width)
    """

    def __init__(self, fn: Callable[..., Any], *modules: nn.Module):
        super().__init__()
        self.fn = fn
        self.owned = nn.ModuleList(modules)

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def checked_module(obj: Any, adapter: Any, method: str) -> nn.Module:
    """``obj`` as returned by ``adapter.<method>``, refused in one line unless it is an ``nn.Module`` with
    parameters (or an :class:`FnModule`): a plain function or a module that does not own its layers trains
    without error, but its weights are never optimised nor saved."""
    where = f"{type(adapter).__name__}.{method}"
    if not isinstance(obj, nn.Module):
        raise UserError(f"{where} returned {type(obj).__name__}, not a torch.nn.Module; wrap a function with "
                        f"unite_sci.adapter.FnModule(fn, *modules_it_uses)")
    if not isinstance(obj, FnModule) and not any(True for _ in obj.parameters()):
        raise UserError(f"{where} returned a {type(obj).__name__} with no parameters (layers it uses but does "
                        f"not own are never trained nor saved); register them as attributes, or wrap a "
                        f"deliberately parameter-free function in unite_sci.adapter.FnModule(fn)")
    return obj
