"""Process-parallel map with a per-item time limit: the one pool every modality's evaluation uses.

Scoring generated samples is per-item work in domain toolkits that holds the GIL: threads do not help,
and one pathological sample (garbage that sends a toolkit's search into millions of candidates) can take
minutes. Each item therefore runs under ``SIGALRM``; a hung item comes back as a failure with its reason
("timeout>10s") instead of stalling the whole evaluation.

Workers start with ``spawn`` by default: forking a parent that already runs torch / OpenMP threads can
deadlock. Callers keep worker functions at module level (picklable), in modules that do not import torch
(each spawned worker would otherwise pay about 1.7 s and 0.9 GB to import it).

A script without an ``if __name__ == "__main__":`` guard cannot use a spawn pool: every worker re-runs the
script's top level while it starts (the multiprocessing "bootstrapping phase" error, once per worker). Such a
caller gets the serial path instead, with one line saying why (:func:`main_reimport_problem`).

A signal that interrupts the map (Ctrl-C, a scheduler's SIGTERM) cancels the items not started and terminates
the workers in the middle of theirs (:func:`end_workers`) instead of waiting for them.

Worker counts follow one rule, :func:`resolve_workers`: ``None`` or ``0`` = every CPU this process may
use, ``n >= 1`` = n processes, 1 = in this process; never more than ``$UNITE_SCI_THREADS`` when that is set
(the CLI's ``--threads``: :func:`limit_threads`).
"""
from __future__ import annotations

import ast
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Callable, Sequence

from tqdm import tqdm

DEFAULT_START_METHOD = "spawn"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
THREADS_ENV = "UNITE_SCI_THREADS"  # at most this many worker processes (and torch threads: limit_threads)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all of them), at most
    ``$UNITE_SCI_THREADS``."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return min(n, _thread_cap() or n)


def _thread_cap() -> int:
    try:
        return max(0, int(os.environ.get(THREADS_ENV, "0")))
    except ValueError:
        return 0


def limit_threads(n: int) -> None:
    """Use at most ``n`` CPUs from here on: torch's intra-op threads, the BLAS / OpenMP pools of libraries
    loaded later, and the worker processes of :func:`parallel_map` (children inherit the cap)."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    os.environ[THREADS_ENV] = str(n)
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")  # this module never imports torch itself (spawned workers stay light)
    if torch is not None:
        torch.set_num_threads(n)


def resolve_workers(n: int | None) -> int:
    """Worker processes for a requested count: None or 0 = :func:`available_cpus`, n >= 1 = n.

    0 means "all" because config files hold integers (``data.eval_workers: 0``) and YAML ``null`` reads
    badly there; both spellings mean the same so that no caller has to translate one into the other.
    """
    if n is None or n == 0:
        return available_cpus()
    if n < 0:
        raise ValueError(f"workers must be >= 0 (0 or None = all CPUs), got {n}")
    return min(int(n), _thread_cap() or int(n))


def main_reimport_problem(start_method: str = DEFAULT_START_METHOD) -> str | None:
    """Why worker processes started with ``start_method`` could not start here, or None when they can.

    ``spawn`` and ``forkserver`` workers re-import the parent's ``__main__`` from its file. That is harmless
    for ``python -c``, notebooks and the console scripts (no file, or a guarded one) and fatal for a plain
    script whose top level does the work: each worker would run it again and fail in the middle of its
    start. The rule here: a ``__main__`` read from a file must hold a top-level ``if __name__ == ...``
    block, and the file must be readable (a script piped on stdin is not).
    """
    if start_method == "fork":
        return None
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or getattr(sys.flags, "interactive", 0):
        return None
    return _unguarded(os.path.abspath(path))


@lru_cache(maxsize=8)
def _unguarded(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return f"the main script '{path}' cannot be read again by worker processes"
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}:
            return None
    return (f"the script '{os.path.basename(path)}' has no `if __name__ == \"__main__\":` guard, which worker "
            "processes need; add one to use every CPU")


_told: set[str] = set()  # reasons already printed by this process


def _say_once(reason: str) -> None:
    if reason not in _told:
        _told.add(reason)
        print(f"unite-sci: running in one process: {reason}", file=sys.stderr, flush=True)


class ItemTimeout(BaseException):
    """Raised inside an item when its time limit passes. A BaseException so that library code with a
    bare ``except Exception`` (some toolkits have them) cannot swallow it."""


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
    runs unlimited. A limit interrupts Python code only: a single C call that never returns (inside a
    toolkit) is not stopped. Exceptions become ``error`` strings: garbage input must never crash an
    evaluation.
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


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGTERM when its parent dies, even of SIGKILL, so that no worker outlives
    the run that started it; elsewhere a worker ends once its current chunk is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _init_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # Workers must stay single-threaded: N processes x M BLAS threads oversubscribe shared cores.
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent (end_workers)
    _die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def end_workers(pool: ProcessPoolExecutor, grace_s: float = 2.0) -> None:
    """Shut ``pool`` down without waiting for its work: items not started are cancelled and workers in the
    middle of a chunk are terminated (SIGTERM, then SIGKILL after ``grace_s`` seconds).

    ``with ProcessPoolExecutor()`` would instead wait in ``shutdown(wait=True)`` for the chunk each worker
    runs and the one queued behind it, up to 64 items each: tens of seconds after a SIGTERM when 20,000 CIFs
    are parsed on a loaded machine, while the workers ignore the terminal's SIGINT (:func:`_init_worker`).
    """
    # the worker list is private; Python 3.14's terminate_workers() is the public way to the same end
    procs = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() drops the reference
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():  # a worker whose initializer installed its own SIGTERM handler
            p.kill()
            p.join(1.0)
    # The pool's manager thread closes its wake-up pipe once it sees the workers gone. Python 3.11's exit
    # hook writes to that pipe without a lock: if the interpreter exits while the thread is closing it, the
    # hook prints "OSError: Bad file descriptor" after our own message. Let the thread finish first.
    if manager is not None and manager.is_alive():
        manager.join(grace_s)


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None = 1,
                 time_limit_s: float | None = None, *, desc: str | None = None,
                 chunksize: int | None = None, start_method: str = DEFAULT_START_METHOD,
                 progress: bool = True, initializer: Callable[..., None] | None = None,
                 initargs: tuple = (), isolate: bool = False) -> list[Outcome]:
    """Apply ``fn`` to every item, in order, in worker processes (see :func:`resolve_workers`).

    Args:
        fn: a module-level function or a picklable callable of one item (pickled by reference).
        workers: processes; 1 = in this process, as is any list too short to pay for starting them.
        time_limit_s: per item, see :func:`run_limited`; None or 0 = no limit.
        initializer, initargs: run once in each worker process after its thread caps are set (e.g. to
            silence a toolkit's logging, which is per process). Never run in this process: the serial
            path would change this process's state for good, so callers that need the same effect
            here wrap the call themselves.
        isolate: never run items in this process, even with one worker or a short list. For items that
            spend seconds inside one C call (a toolkit's conformer search): a signal's handler runs only
            between Python bytecodes, so in this process a SIGTERM or Ctrl-C would wait for the call to
            return; in a worker it is ended at once (:func:`end_workers`).
    Returns: one :class:`Outcome` per item, in input order.
    """
    workers = resolve_workers(workers)
    limited = _Limited(fn, time_limit_s)
    n = len(items)
    bar = dict(total=n, desc=desc, disable=not progress or n == 0, leave=False, mininterval=1.0)
    if isolate and n:
        workers = min(workers, max(1, n // 2))  # as many as the list pays for, but at least one
    elif workers <= 1 or n < 2 * workers:
        return [limited(x) for x in tqdm(items, **bar)]
    problem = main_reimport_problem(start_method)
    if problem:
        _say_once(problem)
        return [limited(x) for x in tqdm(items, **bar)]
    if chunksize is None:
        # Small chunks balance the load (items differ 100x in cost); bigger ones cut pickling overhead.
        chunksize = max(1, min(64, n // (workers * 8)))
    # Child processes inherit the environment at start: set the thread caps before they exist.
    saved = {v: os.environ.get(v) for v in _THREAD_VARS}
    os.environ.update({v: "1" for v in saved})
    try:
        ctx = mp.get_context(start_method)
        pool = ProcessPoolExecutor(workers, mp_context=ctx,
                                   initializer=partial(_init_worker, os.getpid(), initializer,
                                                       tuple(initargs)))
        try:
            outs = list(tqdm(pool.map(limited, items, chunksize=chunksize), **bar))
        except BaseException:  # a signal's Interrupted / KeyboardInterrupt above all
            end_workers(pool)
            raise
        pool.shutdown()
        return outs
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
