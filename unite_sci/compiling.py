"""``torch.compile`` for training runs: whether a run compiles (``train.compile``, or the automatic choice
when it is unset) and where the compiled graphs are kept between runs."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import torch

from .config import TrainConfig
from .files import cache_root
from .stopping import StopSignals

T = TypeVar("T")

COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's own variable: a folder set there is used as it is


def persistent_compile_cache() -> Path:
    """Keep ``torch.compile``'s on-disk caches under ``<cache root>/torch-compile`` (unless
    ``$TORCHINDUCTOR_CACHE_DIR`` is set) with inductor's FX graph cache and the AOT autograd cache on, so
    that a model's compile is paid once per machine, model config and torch version, not once per run.
    torch's own default, ``/tmp/torchinductor_<user>``, is emptied by a reboot. The cache keys hold the
    torch version and the graph, so runs of different configs share the folder safely. Call before the first
    compile of the process (inductor fixes its folder then). Returns the folder.
    """
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    given = os.environ.get(COMPILE_CACHE_ENV)
    # importing torch._inductor fills the variable in with its own default (/tmp/torchinductor_<user>): that
    # value counts as unset, or the cache would stay in /tmp (found when a 2-hour run's graphs landed there)
    if given is None or os.path.abspath(given) == os.path.abspath(default_cache_dir()):
        os.environ[COMPILE_CACHE_ENV] = str(cache_root() / "torch-compile")
    _quiet_cuda_home_note()
    inductor_config.fx_graph_cache = True  # both on by default in torch 2.14; stated, not assumed
    functorch_config.enable_autograd_cache = True
    return Path(os.environ[COMPILE_CACHE_ENV])


def _quiet_cuda_home_note() -> None:
    """Drop one known log line of a CPU compile, ``No CUDA runtime is found, using CUDA_HOME=...``: torch's
    C++ extension helper logs it while inductor builds CPU kernels, where CUDA plays no part."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(getattr(f, "unite_sci", False) for f in log.filters):
        class Filter(logging.Filter):
            unite_sci = True

            def filter(self, record: logging.LogRecord) -> bool:
                return not str(record.msg).startswith("No CUDA runtime is found")

        log.addFilter(Filter())


# train.compile unset (auto): compile when the run repays the first compile. Measured on a 2-core Xeon (docs/
# results.md, Speed): with 2 threads a cold compile takes 90-130 s and buys 1.45-1.84x samples/s (the CPU
# defaults), so it breaks even within 4-7 minutes; on one thread the first compile takes 240-300 s for
# MP-20 and images, which gain only 1.13-1.24x there (break-even 20-45 minutes). From the persistent cache a
# compile takes ~30 s. Eager steps of the CPU defaults take 0.3-0.7 s: 2,000 steps are 10-20 minutes.
AUTO_COMPILE_MINUTES = 10.0  # and 3x on one CPU thread
AUTO_COMPILE_STEPS = 2000


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for ``device`` here (no C++ compiler, no Triton), or None."""
    try:
        if device.type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        elif device.type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                return "no Triton for CUDA kernels"
    except Exception:  # inductor's own search found no compiler (InvalidCxxCompiler and kin)
        return "no C++ compiler found (install g++ or set $CXX)"
    return None


def compile_decision(t: TrainConfig, device: torch.device, threads: int) -> tuple[bool, str]:
    """Whether a run compiles its training step, and why (the line the run prints). ``threads``: torch's
    CPU threads (one thread compiles slower and gains less)."""
    if t.compile is not None:
        return bool(t.compile), f"train.compile={str(t.compile).lower()}"
    scale = 3 if device.type == "cpu" and threads == 1 else 1
    on_cpu = " on one CPU thread" if scale > 1 else ""
    # a run stops at whichever limit comes first: it is short when either set limit is short
    if 0 < t.max_steps < scale * AUTO_COMPILE_STEPS:
        return False, (f"auto: {t.max_steps} steps{on_cpu} are too few to repay a first compile; "
                       "train.compile=true forces it")
    if 0 < t.budget_minutes < scale * AUTO_COMPILE_MINUTES:
        return False, (f"auto: a {t.budget_minutes:g}-minute budget{on_cpu} is too short to repay a first "
                       "compile; train.compile=true forces it")
    size = f"a {t.budget_minutes:g}-minute budget" if t.budget_minutes else f"{t.max_steps} steps"
    missing = compiler_missing(device)
    if missing:
        return False, f"auto: {missing}"
    return True, f"auto: {size} repays the first compile; train.compile=false turns it off"


# ----------------------------------------------------------------------------- a broken cache
_ELF = b"\x7fELF"


def _truncated_elf(path: Path) -> bool:
    """Whether a compiled object (``.so`` / ``.o``) is cut short: empty, not ELF, or shorter than its header
    says (the section header table comes last, so a killed compiler or linker leaves it missing)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return True
    if len(head) < 64 or head[:4] != _ELF:
        return True
    little, wide = head[5] == 1, head[4] == 2  # EI_DATA (1: little-endian), EI_CLASS (2: 64-bit)
    order = "little" if little else "big"
    if wide:
        shoff, shentsize, shnum = (int.from_bytes(head[40:48], order), int.from_bytes(head[58:60], order),
                                   int.from_bytes(head[60:62], order))
    else:
        shoff, shentsize, shnum = (int.from_bytes(head[32:36], order), int.from_bytes(head[46:48], order),
                                   int.from_bytes(head[48:50], order))
    return size < shoff + shentsize * shnum


def repair_compile_cache(folder: Path) -> list[Path]:
    """Remove compiled objects that a killed compile left truncated in ``folder`` (a zero-byte ``main.so``
    made the next run fail with ``ImportError: ... file too short``: inductor reuses any object file that
    exists). Inductor rebuilds what is missing. Returns the removed files."""
    from filelock import FileLock, Timeout  # the lock package inductor itself uses

    removed = []
    if folder.is_dir():
        for path in folder.rglob("*"):
            if path.suffix not in (".so", ".o") or not path.is_file() or not _truncated_elf(path):
                continue
            # inductor builds <key>[.main].so under locks/<key>.lock: a held lock is another run (or rank)
            # writing that object right now, not a leftover
            try:
                (folder / "locks").mkdir(exist_ok=True)
                with FileLock(str(folder / "locks" / f"{path.name.split('.')[0]}.lock"), timeout=0):
                    if path.is_file() and _truncated_elf(path):
                        path.unlink()
                        removed.append(path)
            except (Timeout, OSError):
                continue
    return removed


def compile_failure(e: BaseException) -> str:
    """One line for a compile that failed: the error's last line, without inductor's hints."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = next((ln for ln in lines if "Error" in ln), lines[0] if lines else "")
    return f"{type(e).__name__}: {text}"[:300]


def first_compiled_call(call: Callable[[], T], stop: StopSignals, kept: str, eager: Callable[[str], None]) -> T:
    """Run ``call``, the step that compiles (minutes on a CPU), so that a signal stops it at once (``kept``:
    what the stop keeps, for its message) and a failed compile (a broken cache entry this run could not
    repair, a compiler that crashes) calls ``eager(reason)``, which must undo the compile wrapper, then runs
    ``call`` again eagerly: one line, never a traceback. An error that eager training raises too still
    surfaces, from the second call. ``call`` must be safe to repeat (a training step reseeds from its step
    number and changes nothing before its gradients exist)."""
    try:
        with warnings.catch_warnings(), stop.at_once("compiling the training step (torch.compile, first step)", kept):
            # aot autograd traces the backward under anomaly mode, which prints the forward's traceback
            # ("Error detected in AddmmBackward0 ...") for any exception inside it: a stop there included
            warnings.filterwarnings("ignore", message="Error detected in", category=UserWarning,
                                    module=r"torch\.autograd")
            return call()
    except Exception as e:  # Interrupted is a KeyboardInterrupt: it passes
        eager(compile_failure(e))
    return call()
