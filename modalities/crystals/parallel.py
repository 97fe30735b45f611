"""Process-parallel map with a per-item time limit, for slow pymatgen work on crystals.

CIF parsing, SMACT enumeration and ``StructureMatcher`` comparisons are pure-Python CPU work: threads do
not help, and one pathological structure (a garbage cell with thousands of lattice candidates) can take
minutes. Each item therefore runs under ``SIGALRM``; a hung item comes back as a failure with its reason
("timeout>10s") instead of stalling the whole evaluation.

Workers start with ``spawn`` by default: forking a parent that already runs torch / OpenMP threads can
deadlock. Callers keep worker functions at module level (picklable), in modules that do not import torch
(each spawned worker would otherwise pay about 1.7 s and 0.9 GB to import it).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tqdm import tqdm

DEFAULT_START_METHOD = "spawn"


class ItemTimeout(BaseException):
    """Raised inside an item when its time limit passes. A BaseException so that library code with a
    bare ``except Exception`` (pymatgen has some) cannot swallow it."""


@dataclass
class Outcome:
    """Result of one item: ``value`` (None on failure), ``error`` (None on success) and wall seconds."""

    value: Any
    error: str | None
    seconds: float


def _on_alarm(signum: int, frame: Any) -> None:
    raise ItemTimeout()


def run_limited(fn: Callable[[Any], Any], item: Any, time_limit_s: float | None) -> Outcome:
    """``fn(item)`` with a wall-clock limit (seconds; None or 0 = no limit).

    The limit needs ``SIGALRM``, which only the main thread of a process can receive; elsewhere the item
    runs unlimited. Exceptions become ``error`` strings: garbage input must never crash an evaluation.
    """
    use_alarm = bool(time_limit_s) and hasattr(signal, "setitimer") and \
        threading.current_thread() is threading.main_thread()
    old_handler = None
    t0 = time.perf_counter()
    try:
        if use_alarm:
            old_handler = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, float(time_limit_s))
        try:
            value = fn(item)
            error = None
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0.0)
    except ItemTimeout:
        value, error = None, f"timeout>{time_limit_s:g}s"
    except Exception as e:  # noqa: BLE001 - any failure of one item is that item's result
        value, error = None, f"{type(e).__name__}: {str(e)[:160]}"
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGALRM, old_handler)
    return Outcome(value, error, time.perf_counter() - t0)


class _Limited:
    """Picklable ``item -> Outcome`` wrapper around a module-level function."""

    def __init__(self, fn: Callable[[Any], Any], time_limit_s: float | None):
        self.fn, self.time_limit_s = fn, time_limit_s

    def __call__(self, item: Any) -> Outcome:
        return run_limited(self.fn, item, self.time_limit_s)


def _init_worker() -> None:
    # Workers must stay single-threaded: N processes x M BLAS threads oversubscribe shared cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 1,
                 time_limit_s: float | None = None, desc: str | None = None,
                 chunksize: int | None = None, start_method: str = DEFAULT_START_METHOD,
                 progress: bool = True) -> list[Outcome]:
    """Apply ``fn`` to every item, in order, in ``workers`` processes (1 = in this process).

    fn: a module-level function (pickled by reference). time_limit_s: per item, see :func:`run_limited`.
    Returns one :class:`Outcome` per item, in input order.
    """
    limited = _Limited(fn, time_limit_s)
    n = len(items)
    bar = dict(total=n, desc=desc, disable=not progress or n == 0, leave=False, mininterval=1.0)
    if workers <= 1 or n < 2 * max(workers, 1):
        return [limited(x) for x in tqdm(items, **bar)]
    if chunksize is None:
        # Small chunks balance the load (items differ 100x in cost); bigger ones cut pickling overhead.
        chunksize = max(1, min(64, n // (workers * 8)))
    # Child processes inherit the environment at start: set the thread caps before they exist.
    saved = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({v: "1" for v in saved})
    try:
        ctx = mp.get_context(start_method)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            return list(tqdm(pool.map(limited, items, chunksize=chunksize), **bar))
    except BrokenProcessPool as e:
        # A worker died (out of memory, or a parent whose __main__ spawn cannot re-import, such as a
        # script piped on stdin): the work is still done, serially, rather than lost.
        warnings.warn(f"process pool failed ({e}); running {n} items in this process", stacklevel=2)
        return [limited(x) for x in tqdm(items, **bar)]
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
