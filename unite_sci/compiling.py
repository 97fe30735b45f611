"""``torch.compile`` for training runs: whether a run compiles (``train.compile``, or the automatic choice
when it is unset) and where the compiled graphs are kept between runs."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import TrainConfig
from .files import cache_root

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
    inductor_config.fx_graph_cache = True  # both on by default in torch 2.14; stated, not assumed
    functorch_config.enable_autograd_cache = True
    return Path(os.environ[COMPILE_CACHE_ENV])


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
