"""Where a training step's time goes, from ``torch.profiler``: the step's operators grouped by kind, and the
matmul rate the model's own GEMM shapes can reach on this machine.

The second part answers "why is MFU not higher?" with a number: MFU is measured against a large square
matmul (1024^3), but a CPU preset multiplies small, thin matrices (width 128: K = 128), which run well
below that rate even alone. Timing each GEMM shape of the step by itself gives the rate those shapes reach
with nothing else in the way; the step's FLOPs at that rate, with zero time for everything that is not a
GEMM, bound the MFU any kernel fusion or scheduling could give this model at this batch.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

# kineto (torch.profiler's backend) prints stage lines and, on a machine without a GPU, an "ERROR" about the
# GPU count that is no error here: level 5 silences both (read when the profiler first starts; its two USDT
# start/stop lines stay)
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

# operator kinds, first match wins (names as the profiler reports them)
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
KINDS: list[tuple[str, Callable[[str], bool]]] = [
    ("GEMM (mm, addmm, bmm)", lambda n: n in GEMM_OPS),
    ("attention (scaled_dot_product)", lambda n: "scaled_dot_product" in n or "flash_attention" in n
     or "efficient_attention" in n),
    ("optimiser (foreach / fused)", lambda n: n.startswith("aten::_foreach") or n.startswith("aten::_fused")),
    ("compiled graphs (fused element-wise kernels)", lambda n: "CompiledFxGraph" in n or "Torch-Compiled" in n
     or n.startswith("cpp_fused") or n.startswith("graph_")),
    ("copies, views and reshapes", lambda n: n in ("aten::copy_", "aten::clone", "aten::contiguous",
                                                   "aten::cat", "aten::index", "aten::index_select",
                                                   "aten::gather", "aten::scatter_add_", "aten::where",
                                                   "aten::fill_", "aten::zero_", "aten::zeros", "aten::empty")),
    ("other element-wise and reductions", lambda n: n.startswith("aten::")),
]


def op_kind(name: str) -> str | None:
    """The kind of a profiler event's name, None for what is not an operator (Python frames, labels)."""
    return next((kind for kind, match in KINDS if match(name)), None)


def gemm_dims(name: str, shapes: list[list[int]]) -> tuple[int, int, int, int]:
    """(batch, m, k, n) of one GEMM call from its recorded input shapes. The profiler records a transposed
    operand by its stored shape at times ((m, k) with (n, k)): the shared k decides which way round."""
    if name not in GEMM_OPS:
        raise ValueError(f"not a GEMM operator: {name}")
    dims = [s for s in shapes if s]
    a, b = dims[-2], dims[-1]  # addmm / baddbmm: the addend comes first
    batch = a[0] if len(a) == 3 else 1
    m, k = a[-2], a[-1]
    n = b[-1] if b[-2] == k else b[-2]
    return batch, m, k, n


def gemm_flops(name: str, shapes: list[list[int]]) -> int:
    """Multiply-add FLOPs (2 per MAC) of one GEMM call from its recorded input shapes."""
    batch, m, k, n = gemm_dims(name, shapes)
    return 2 * batch * m * k * n


def standalone_gemm_seconds(name: str, shapes: list[list[int]], seconds: float = 0.1) -> float:
    """Seconds per call of this GEMM shape alone (same dtype fp32, same threads), warmed up."""
    batch, m, k, n = gemm_dims(name, shapes)
    if name in ("aten::bmm", "aten::baddbmm"):
        a, b = torch.randn(batch, m, k), torch.randn(batch, k, n)
        fn = lambda: torch.bmm(a, b)  # noqa: E731
    else:
        a, b, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
        fn = (lambda: torch.addmm(bias, a, b)) if name == "aten::addmm" else (lambda: torch.mm(a, b))  # noqa: E731
    for _ in range(3):
        fn()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or reps < 5:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps


def step_profile(step: Callable[[], Any], steps: int, flops_per_step: float,
                 gemm_seconds: float = 0.1) -> dict[str, Any]:
    """Profile ``steps`` calls of ``step`` (already warmed up) on the CPU.

    Returns the wall seconds per step, the self time per step of each operator kind (``kinds``; what no
    operator accounts for, Python and autograd bookkeeping, is its own line), the top operators, and the GEMM
    analysis: FLOPs and rate inside the step and the rate of the same shapes alone (see
    :func:`against_reference` for the MFU bound that rate implies).
    """
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    kinds: dict[str, float] = {kind: 0.0 for kind, _ in KINDS}
    per_op: dict[str, float] = {}
    gemm_time = gemm_fl = alone = 0.0
    for evt in prof.key_averages(group_by_input_shape=True):
        kind = op_kind(evt.key)
        if kind is None:
            continue
        sec = evt.self_cpu_time_total / 1e6 / steps
        kinds[kind] += sec
        per_op[evt.key] = per_op.get(evt.key, 0.0) + sec
        if evt.key in GEMM_OPS and evt.input_shapes:
            calls = evt.count / steps
            fl = gemm_flops(evt.key, evt.input_shapes)
            gemm_time += sec
            gemm_fl += calls * fl
            alone += calls * standalone_gemm_seconds(evt.key, evt.input_shapes, gemm_seconds)
    kinds["outside operators (Python, autograd engine)"] = max(wall - sum(kinds.values()), 0.0)
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
    in_step = gemm_fl / gemm_time if gemm_time else 0.0
    standalone = gemm_fl / alone if alone else 0.0
    return {
        "step_s": wall,
        "kinds": kinds,
        "top_ops": [{"op": k, "seconds": v, "share_%": 100 * v / wall} for k, v in top],
        "gemm_flops_per_step": gemm_fl,
        "gemm_share_of_flops_%": 100 * gemm_fl / flops_per_step if flops_per_step else 0.0,
        "gemm_GFLOPs_in_step": in_step / 1e9,
        "gemm_GFLOPs_alone": standalone / 1e9,
        "gemm_seconds_alone": alone,
    }


def against_reference(p: dict[str, Any], reference_flops: float) -> dict[str, Any]:
    """``p`` with the GEMM rates as shares of the large-matmul rate the benchmark's MFU uses, and the MFU
    bound: the whole step's FLOPs at the rate its GEMM shapes reach alone, nothing else taking time."""
    alone = p["gemm_GFLOPs_alone"] * 1e9
    return {**p, "gemm_in_step_%_of_reference": 100 * p["gemm_GFLOPs_in_step"] * 1e9 / reference_flops,
            "gemm_alone_%_of_reference": 100 * alone / reference_flops,
            "mfu_bound_%": 100 * min(alone, reference_flops) / reference_flops}


def profile_markdown(name: str, p: dict[str, Any], mfu: float) -> str:
    """One run's profile as the report's text: kinds with shares, the GEMM analysis, the top operators."""
    from unite_sci.protocol import markdown_table

    step = p["step_s"]
    kinds = [{"kind": k, "seconds": v, "share_%": 100 * v / step} for k, v in p["kinds"].items() if v > 0]
    return (f"**{name}** (profiled step {step:.3f} s; MFU of the timed run {mfu:.1f} %)\n\n"
            + markdown_table(kinds, ["kind", "seconds", "share_%"]) + "\n"
            + f"GEMM: {p['gemm_share_of_flops_%']:.0f} % of the step's FLOPs; "
              f"{p['gemm_GFLOPs_in_step']:.1f} GFLOP/s inside the step ({p['gemm_in_step_%_of_reference']:.0f} % of "
              f"the reference), {p['gemm_GFLOPs_alone']:.1f} GFLOP/s for "
              f"the same shapes alone ({p['gemm_alone_%_of_reference']:.0f} % of the 1024^3 reference): the "
              f"MFU bound of these shapes is {p['mfu_bound_%']:.0f} % with every other operator free.\n\n"
            + markdown_table(p["top_ops"], ["op", "seconds", "share_%"]) + "\n")
