"""The modality adapter API: a typed Protocol, the batch it produces, and the registry.

A modality is one small class with the members of :class:`Adapter`. The core trains, samples and
evaluates any class that satisfies it; it never imports a modality. Adapters are found by name in a
registry filled by the :func:`register` decorator and by the ``unite_sci.adapters`` entry-point group
(how this package's own adapters and third-party ones are discovered).

Units, dataset facts (splits, seeds, statistics) and the conversion back to domain objects live in the
adapter and only there.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .errors import UserError
from .model import RegisterLayout

ENTRY_POINT_GROUP = "unite_sci.adapters"


@dataclass
class Batch:
    """What an adapter's ``collate`` returns.

    data: the modality's tensors, keyed by name (element-level tensors are (B, N, ...)).
    mask: (B, N) bool, True for real elements; None when every sample has the same N elements.
    cond: (B,) long class labels; unconditional data use the null index (``Adapter.num_classes``).
    """

    data: dict[str, Tensor]
    mask: Tensor | None
    cond: Tensor

    def __len__(self) -> int:
        return int(self.cond.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        mask = None if self.mask is None else self.mask.to(device)
        return Batch({k: v.to(device) for k, v in self.data.items()}, mask, self.cond.to(device))


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


def available() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_adapter_class(name: str) -> type:
    """The adapter class registered under ``name``; UserError listing the valid names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown modality {name!r}; available: {', '.join(available())}")
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
