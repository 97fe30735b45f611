"""Rules on config fields, declared beside the field, and the one walker that checks them.

A config is a tree of dataclasses: the run config with the adapter's ``data`` section, or a benchmark's
options. Three kinds of rule, each written where the field is:

- a choice: the field's type is a :class:`Choice` (a str-valued Enum), or ``one_of(default, values)`` for
  a set that another table owns (the keys of a data-set registry);
- a range: ``ranged(default, lo=..., hi=...)``;
- a rule between fields: the dataclass's ``constraints()`` method yields ``(key, why)`` pairs, keys
  relative to that dataclass.

:func:`check` walks the tree and raises the first broken rule as one :class:`ConfigError` line naming the
full key: ``config key 'data.max_atoms': must lie in [3, 512], got 2``.

    @dataclass
    class MyConfig:
        mode: Mode = Mode.fast                               # class Mode(Choice): fast = "fast" ...
        size: int = ranged(32, lo=1, hi=512)
        cutoff: Optional[float] = ranged(None, lo=0, open_lo=True)   # None is always allowed

        def constraints(self) -> Iterator[tuple[str, str]]:
            if self.mode == "fast" and self.size > 64:
                yield "size", "mode=fast takes at most 64"
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

from .errors import ConfigError


class Choice(str, enum.Enum):
    """A config choice. Members are ``str``, so they compare, hash, format and serialise (JSON, the saved
    YAML) as the plain word, and a config written before a field became a Choice still loads.

    omegaconf reads a YAML word into an Enum field by the member's *name*, so every member's name must be
    its value (``euler = "euler"``); a member that breaks this fails when its class is defined.
    """

    def __init__(self, value: str) -> None:
        if value != self.name:
            raise TypeError(f"{type(self).__name__}.{self.name} = {value!r}: a Choice's value must be its name")

    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Range:
    """Bounds of a number; ``None`` is no bound, ``open_*`` excludes the bound itself."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    open_lo: bool = False
    open_hi: bool = False

    def contains(self, value: float) -> bool:
        above = self.lo is None or (value > self.lo if self.open_lo else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        """What the refusal says after "must": ``be > 0``, ``lie in [0, 1)``."""
        if self.hi is None:
            return f"be {'>' if self.open_lo else '>='} {self.lo:g}"
        if self.lo is None:
            return f"be {'<' if self.open_hi else '<='} {self.hi:g}"
        return f"lie in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"


def ranged(default: Any, *, lo: Optional[float] = None, hi: Optional[float] = None, open_lo: bool = False,
           open_hi: bool = False, note: str = "") -> Any:
    """A dataclass field whose value (or each number in its list) must lie in the range; ``note`` is added
    to the refusal (what a special value means, e.g. "0 = all cores")."""
    return field(default=default, metadata={"range": Range(lo, hi, open_lo, open_hi), "note": note})


# the three ranges most fields need
def positive(default: Any, note: str = "") -> Any:
    return ranged(default, lo=0, open_lo=True, note=note)


def non_negative(default: Any, note: str = "") -> Any:
    return ranged(default, lo=0, note=note)


def unit_interval(default: Any, note: str = "") -> Any:
    return ranged(default, lo=0, hi=1, note=note)


def one_of(default: Any, values: Iterable[Any], note: str = "") -> Any:
    """A dataclass field restricted to ``values``: for sets owned by another table (the keys of a registry),
    where a :class:`Choice` would say them a second time."""
    return field(default=default, metadata={"choices": tuple(values), "note": note})


def _with_note(why: str, note: str) -> str:
    return f"{why} ({note})" if note else why


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> declared type, ``Optional[X]`` unwrapped to ``X`` (string annotations resolved)."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1
        out[name] = args[0] if optional else tp
    return out


def _numbers(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """The value, or each item of a (nested) list, with its key (``sample.cfg_interval[1]``)."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{key}[{i}]")
    else:
        yield key, value


def _field_problems(f: dataclasses.Field, tp: Any, value: Any, key: str) -> Iterator[tuple[str, str]]:
    for k, v in _numbers(value, key):
        if isinstance(v, float) and not math.isfinite(v):
            yield k, f"must be a finite number, got {v}"
    members = typing.get_args(tp) if typing.get_origin(tp) is list else (tp,)
    kind = members[0] if members else None
    if isinstance(kind, type) and issubclass(kind, Choice):
        for k, v in _numbers(value, key):
            if v not in {m.value for m in kind}:
                yield k, f"{v!r} is not one of {', '.join(m.value for m in kind)}"
    note = f.metadata.get("note", "")
    if "choices" in f.metadata and value is not None and value not in f.metadata["choices"]:
        yield key, _with_note(f"{value!r} is not one of {', '.join(map(str, f.metadata['choices']))}", note)
    bounds = f.metadata.get("range")
    if bounds is not None:
        for k, v in _numbers(value, key):
            if v is not None and not bounds.contains(v):
                yield k, _with_note(f"must {bounds}, got {v}", note)


def problems(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every broken rule of a dataclass tree as (full dotted key, why): fields first, depth first, then
    the node's own ``constraints()`` (which may assume its fields are each valid)."""
    found = False
    hints = field_types(type(node))
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        for problem in _field_problems(f, hints.get(f.name), value, key):
            found = True
            yield problem
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for problem in problems(value, f"{key}."):
                found = True
                yield problem
    if not found and hasattr(node, "constraints"):
        for key, why in node.constraints():
            yield f"{prefix}{key}", why


def check(node: Any, what: str = "config key") -> None:
    """Raise the first broken rule of the dataclass tree ``node`` as one line: ``<what> '<key>': <why>``."""
    for key, why in problems(node):
        raise ConfigError(f"{what} '{key}': {why}")
