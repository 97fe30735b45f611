"""Two reductions with one rule each, shared by the core and every adapter.

* :func:`masked_mean` -- per-sample mean over the real entries of a padded batch (elements, registers,
  pairs): every sample then weighs the same in a loss, however many entries it has.
* :func:`percent` -- a count as a percentage of another; undefined (NaN) when the whole is empty.

The module imports no torch (:func:`masked_mean` only calls tensor methods), so that evaluation workers,
which import the metric modules that use :func:`percent`, stay cheap to start.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the entries ``mask`` selects, per sample.

    Args:
        x: (B, ...) values, at least one dimension after B.
        mask: broadcastable to ``x``, e.g. (B, N) for x (B, N) or (B, K, 1) for x (B, K, C). A bool mask
            is cast to ``x.dtype``; a float mask (0/1) is used as given, with torch's type promotion.
    Returns: (B,) ``sum(x * mask) / count(mask)`` over every dimension but the first, the count taken
    after broadcasting (a (B, K, 1) mask over C channels counts C per selected register). A sample with
    nothing selected gives 0, not NaN, so an empty sample cannot poison a batch mean.

    Example: ``masked_mean(se, batch.mask).mean()``, per-element errors averaged per sample, then over samples.
    """
    m = mask if mask.is_floating_point() else mask.to(x.dtype)
    dims = tuple(range(1, x.dim()))
    return (x * m).sum(dims) / m.expand_as(x).sum(dims).clamp_min(1.0)


def percent(part: float, whole: float, digits: int | None = None) -> float:
    """``100 * part / whole``, rounded to ``digits`` decimals when given; NaN when ``whole`` is 0.

    A percentage of nothing is undefined, not 0: "uniqueness 0 %" for a run without one valid sample
    would read as a measured result. Written to JSON as null (see :func:`unite_sci.files.write_json`).
    """
    if not whole:
        return float("nan")
    value = 100.0 * float(part) / float(whole)
    return value if digits is None else round(value, digits)
