"""Pathway analysis of a trained model: the paper's Fig. 6 (alignment of the tokenization and denoising
pathways), Fig. 7 (decoded one-shot denoised predictions) and its weight-entropy (description length) analysis.

``unite-sci analyze --checkpoint C`` on ``num`` test items, with SPEC's path ``x_t = t z0 + (1 - t) eps``
(t = 1 clean) and the null condition in both passes, so that the mode is the only difference:

- ``alignment.csv``: per Generative Encoder block, linear CKA (standard biased-HSIC form, see
  ``similarity.py``) and mean cosine similarity between the register tokens' block outputs in the
  tokenization pass (item tokens + N(0, I) registers -> z0) and in the denoising pass on x_t of the same
  items, at each t. Rows are the real register tokens of all items (register k of item i is the same row in
  both passes); layer ``latent`` compares z0 with x1_hat (the Fig. 6 "final latents"). A separate-weights
  model (``model.shared_weights=false``) compares the encoder's block i with the denoiser's block i.
- ``reconstruction.csv``: the adapter's reconstruction metrics (``evaluate_reconstruction``) of
  decode(x1_hat(x_t, t)) against the inputs, with the latent MSE of x1_hat against z0 (per channel); the
  row ``z0`` (t = 1) is the plain reconstruction, the ceiling of the others.
- ``entropy.csv``: per parameter tensor, the entropy (bits per value, ``bins`` equal bins over the tensor's
  range) of the trained weights (EMA when the checkpoint samples with EMA) and of a freshly initialised
  network of the same config (seeded); description length = values x bits / 8 bytes, totalled per part
  (encoder, denoiser, decoder, ...) and kind (``norm``: norms and adaLN modulation; ``attn/mlp``; ``other``).
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from . import collapse
from .diagnose import health_warnings, masked_mse, one_shot, training_rows
from .similarity import BINS, Alignment, histogram_entropy

TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


@contextmanager
def register_outputs(ge: nn.Module, reg_mask: Tensor) -> Iterator[list[Tensor | None]]:
    """While open, slot i holds block i's output at the real register tokens, (n_real, d), of the last
    forward pass of ``ge`` (a ``GenerativeEncoder``); ``reg_mask`` (B, K) bool marks the real registers.

    The registers are the first K tokens of the sequence, after the in-context condition copies that the
    GE prepends from block ``in_context_start`` on."""
    outs: list[Tensor | None] = [None] * len(ge.blocks)
    k = reg_mask.shape[1]

    def hook(i: int):
        skip = ge.in_context_tokens if ge.in_context_tokens and i >= ge.in_context_start else 0

        def keep(module: nn.Module, args: Any, out: Tensor) -> None:
            outs[i] = out[:, skip:skip + k][reg_mask]  # (B, L, d) -> (n_real, d)
        return keep

    handles = [blk.register_forward_hook(hook(i)) for i, blk in enumerate(ge.blocks)]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def pathway_alignment(model, adapter, items: Sequence[Any], *, times: Sequence[float] = TIMES,
                      batch_size: int = 128, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Alignment per (t, layer) and the decoded one-shot predictions per t; see the module docstring.

    Returns ``{"alignment": rows, "inputs": objects, "decoded": {t: objects}, "latent_mse": {t: mse}}``
    where ``decoded[1.0]`` is decode(z0) and the objects are the adapter's domain objects."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    layers = [f"block {i}" for i in range(len(model.encoder.blocks))] + ["latent"]
    stats = {t: [Alignment() for _ in layers] for t in times}
    inputs: list[Any] = []
    decoded: dict[float, list[Any]] = {t: [] for t in (*times, 1.0)}
    sq: dict[float, list[tuple[float, float]]] = {t: [] for t in times}
    sc = model.cfg.flow.self_condition > 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # register noise and eps, without moving the caller's stream
        for lo in tqdm(range(0, len(items), batch_size), desc="analyze", disable=not progress, dynamic_ncols=True):
            batch = adapter.collate(list(items[lo:lo + batch_size]))
            inputs.extend(adapter.batch_to_domain(batch))
            batch = batch.to(device)
            b = len(batch)
            regs = model.registers(batch.mask, b, device, batch.conds)
            with register_outputs(model.encoder, regs.mask) as tok:
                z = model.encode(batch, regs)  # (B, K, C)
            tok = [*tok, z[regs.mask]]
            # the path's noise continues the stream that drew the registers: a generator seeded alike would
            # repeat the tokenization noise as eps, and x_t would carry the encoder's own input
            eps = torch.randn(z.shape).to(device)
            null = torch.full((b,), model.encoder.null_class, dtype=torch.long, device=device)
            decoded[1.0].extend(adapter.to_domain(model.decode(z, batch.mask, regs), batch.mask))

            def denoise(x: Tensor, t: Tensor) -> Tensor:
                return model.denoiser.denoise(x, t, null, regs, self_cond=torch.zeros_like(x) if sc else None)

            for t in times:
                with register_outputs(model.denoiser, regs.mask) as den:
                    _, x1 = one_shot(denoise, z, eps, t)  # (B, K, C)
                for acc, a, d in zip(stats[t], tok, [*den, x1[regs.mask]]):
                    acc.update(a, d)
                sq[t].append((masked_mse(x1, z, regs.mask), float(regs.mask.sum())))
                decoded[t].extend(adapter.to_domain(model.decode(x1, batch.mask, regs), batch.mask))
    rows = [{"t": t, "layer": name, "depth": j, "cka": acc.cka(), "cosine": acc.cosine(), "rows": acc.n}
            for t in times for j, (name, acc) in enumerate(zip(layers, stats[t]))]
    mse = {t: sum(m * w for m, w in v) / max(sum(w for _, w in v), 1.0) for t, v in sq.items()}
    return {"alignment": rows, "inputs": inputs, "decoded": decoded, "latent_mse": mse}


def reconstruction_rows(adapter, inputs: list[Any], decoded: dict[float, list[Any]],
                        latent_mse: dict[float, float]) -> list[dict[str, Any]]:
    """One row per t: the adapter's numeric reconstruction metrics of the decoded objects against the
    inputs, and the latent MSE of x1_hat against z0 (t = 1: decode(z0), MSE 0)."""
    rows = []
    for t, objs in sorted(decoded.items()):
        metrics = adapter.evaluate_reconstruction(inputs, objs)
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append({"t": t, "latent": "z0" if t == 1.0 else "x1_hat", "latent_mse": latent_mse.get(t, 0.0),
                     **numeric})
    return rows


def param_kind(name: str) -> str:
    """``norm`` (norm weights and adaLN modulation: how the two modes calibrate features), ``attn/mlp`` (the
    functional sublayers) or ``other`` (embeddings, heads, output projections)."""
    if "norm" in name or ".ada." in name:
        return "norm"
    if ".attn." in name or ".mlp." in name:
        return "attn/mlp"
    return "other"


def weight_entropy(trained: nn.Module, fresh: nn.Module, bins: int = BINS) -> list[dict[str, Any]]:
    """Per parameter tensor of ``trained`` (shared tensors once): entropy in bits per value and description
    length in MB (values x bits / 8 / 1e6) of its weights and of the same tensor of ``fresh``."""
    init = dict(fresh.named_parameters())
    rows = []
    for name, p in trained.named_parameters():
        q = init[name]
        h_init, h_trained = histogram_entropy(q, bins), histogram_entropy(p, bins)
        rows.append({"tensor": name, "part": name.split(".")[0], "kind": param_kind(name), "numel": p.numel(),
                     "bits_init": h_init, "bits_trained": h_trained, "mb_init": p.numel() * h_init / 8e6,
                     "mb_trained": p.numel() * h_trained / 8e6})
    return rows


def entropy_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Description length (MB) summed per (part, kind), per part and overall, init beside trained."""
    groups: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        for key in ((r["part"], r["kind"]), (r["part"], "all"), ("all", "all")):
            g = groups.setdefault(key, {"numel": 0, "mb_init": 0.0, "mb_trained": 0.0})
            for f in g:
                g[f] += r[f]
    order = list(dict.fromkeys(r["part"] for r in rows)) + ["all"]
    key = lambda pk: (order.index(pk[0]), pk[1] == "all", pk[1])  # noqa: E731: parts as built, kinds, then all
    return [{"part": p, "kind": k, **groups[(p, k)]} for p, k in sorted(groups, key=key)]


def fresh_model(loaded, seed: int) -> nn.Module:
    """A newly initialised network of the checkpoint's config, seeded, without moving the caller's stream."""
    from .unite import Unite

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Unite(loaded.adapter, loaded.cfg)


def run_analyze(checkpoint: str, out: str | None = "runs/analyze", num: int = 300, seed: int = 0,
                times: Sequence[float] = TIMES, bins: int = BINS, overrides: Sequence[str] = (),
                device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Load ``checkpoint`` (``overrides``: its ``data.*`` / ``sample.*`` settings), run the three analyses on
    ``num`` test items and write alignment.csv, reconstruction.csv, entropy.csv, analyze.png, report.json and
    report.md into ``out`` (when given). Returns the report."""
    from .engine import load_model, provenance
    from .errors import UserError
    from .files import writable_dir, write_json, write_text

    if num < 2:
        raise UserError(f"--num must be >= 2, got {num}")
    if not times or any(not 0.0 < t < 1.0 for t in times):
        raise UserError(f"noise levels t must lie in (0, 1), got {list(times)}")
    folder = writable_dir(out) if out else None
    loaded = load_model(checkpoint, device, overrides=list(overrides))
    test = loaded.adapter.build_splits()["test"]
    items = [test[i] for i in range(min(num, len(test)))]
    if len(items) < 2:
        raise UserError(f"the test split has {len(test)} item(s); the analysis needs >= 2")
    notes = [f"analyze uses {len(items)} test items, fewer than the {num} asked for: the test split has "
             f"{len(test)}"] if len(items) < num else []
    for note in notes:  # never silent: a smaller sample makes every number noisier
        print(f"note: {note}", file=sys.stderr, flush=True)
    t0 = time.time()
    res = pathway_alignment(loaded.model, loaded.adapter, items, times=times, seed=seed, progress=progress)
    recon = reconstruction_rows(loaded.adapter, res["inputs"], res["decoded"], res["latent_mse"])
    weights = weight_entropy(loaded.model, fresh_model(loaded, seed), bins)
    report = {"num_items": len(items), "num_requested": num, "notes": notes, "seed": seed, "times": list(times), "bins": bins,
              "cka": "linear CKA, standard (biased) HSIC estimator, rows = real register tokens",
              "condition": "null in both passes", "alignment": res["alignment"], "reconstruction": recon,
              "entropy_totals": entropy_totals(weights), "wall_s": round(time.time() - t0, 1),
              **provenance(loaded)}
    # analyze draws no samples: of the collapse checks only the training log's applies (a stalled decoder)
    report["warnings"] = health_warnings({}, training_rows(checkpoint))
    for line in report["warnings"]:
        collapse.warn(line)
    if folder is not None:
        write_text(to_csv(res["alignment"]), folder / "alignment.csv")
        write_text(to_csv(recon), folder / "reconstruction.csv")
        write_text(to_csv(weights), folder / "entropy.csv")
        write_json(report, folder / "report.json")
        write_text(markdown(report), folder / "report.md")
        plot(report, folder / "analyze.png")
    return report


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows (dicts) as CSV text, columns in first-seen order; floats with 6 significant digits."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    w.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def headline_metric(rows: list[dict[str, Any]]) -> str | None:
    """The adapter's first reconstruction metric that is not a count (its own order), for the figure."""
    keys = [k for k in rows[0] if k not in ("t", "latent", "latent_mse")] if rows else []
    return next((k for k in keys if "num" not in k and not k.startswith("n_")), None)


def markdown(report: dict[str, Any]) -> str:
    """Three tables: CKA / cosine per layer and t; reconstruction metrics per t; description length."""
    times = report["times"]
    lines = [f"# Pathway analysis of {report.get('checkpoint', '?')} ({report.get('train_steps', '?')} steps)", "",
             f"{report['num_items']} test items, seed {report['seed']}, checkpoint sha256 "
             f"{report.get('checkpoint_sha256', '?')}; {report['cka']}; condition {report['condition']}.", "",
             *[f"Note: {n}.\n" for n in report.get("notes", [])],
             *[f"**Warning**: {w}.\n" for w in report.get("warnings", [])],
             "## Alignment of tokenization and denoising activations: CKA / cosine", "",
             "| layer | " + " | ".join(f"t={t:g}" for t in times) + " |", "|---" * (len(times) + 1) + "|"]
    cell = {(r["layer"], r["t"]): f"{r['cka']:.3f} / {r['cosine']:.3f}" for r in report["alignment"]}
    for layer in dict.fromkeys(r["layer"] for r in report["alignment"]):
        lines.append(f"| {layer} | " + " | ".join(cell[(layer, t)] for t in times) + " |")
    recon = report["reconstruction"]
    keys = [k for k in recon[0] if k != "t"] if recon else []
    lines += ["", "## Decoded one-shot prediction x1_hat(x_t, t) against the input", "",
              "| t | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in recon:
        lines.append(f"| {r['t']:g} | " + " | ".join(
            f"{r.get(k, float('nan')):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |")
    lines += ["", f"## Weight entropy ({report['bins']} bins per tensor): description length, MB", "",
              "| part | kind | values | init | trained |", "|---|---|---|---|---|"]
    for g in report["entropy_totals"]:
        lines.append(f"| {g['part']} | {g['kind']} | {int(g['numel'])} | {g['mb_init']:.4f} | {g['mb_trained']:.4f} |")
    return "\n".join(lines) + "\n"


MIN_RELATIVE_SPAN = 0.1  # an axis spans at least 10 % of its largest |value|


def readable_limits(values: Sequence[float], min_relative_span: float = MIN_RELATIVE_SPAN) -> tuple[float, float]:
    """y limits around ``values`` that span at least ``min_relative_span`` of their largest magnitude, so that
    noise is not drawn as a trend (matplotlib's autoscale stretched a PSNR spread of 0.008 dB over the whole
    axis). NaNs are ignored; all-NaN gives (0, 1)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    span = max(hi - lo, min_relative_span * max(abs(lo), abs(hi)), 1e-12)
    mid, pad = (lo + hi) / 2, 0.55 * span  # 5 % margin on each side
    return mid - pad, mid + pad


def plot(report: dict[str, Any], path: Path) -> None:
    """Three panels: CKA (solid) and cosine (dashed) against layer, one colour per t; the headline
    reconstruction metric of decode(x1_hat) against t, decode(z0) as a line; description length per part and
    kind, init beside trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.5))
    align = report["alignment"]
    for i, t in enumerate(report["times"]):
        rows = sorted((r for r in align if r["t"] == t), key=lambda r: r["depth"])
        depth = [r["depth"] for r in rows]
        a1.plot(depth, [r["cka"] for r in rows], "-o", color=f"C{i}", label=f"CKA t={t:g}")
        a1.plot(depth, [r["cosine"] for r in rows], "--", color=f"C{i}", label=f"cosine t={t:g}")
    names = list(dict.fromkeys(r["layer"] for r in align))
    a1.set_xticks(range(len(names)), [n.replace("block ", "") for n in names], fontsize="small")
    a1.set_xlabel("GE block (latent: z0 vs x1_hat)")
    a1.set_ylabel("tokenization vs denoising")
    a1.set_ylim(min(0.0, *(r["cosine"] for r in align)) - 0.02, 1.02)  # CKA lies in [0, 1]: the whole range
    a1.legend(fontsize="x-small", ncol=2)
    recon, key = report["reconstruction"], headline_metric(report["reconstruction"])
    if key is not None:
        pts = [(r["t"], r.get(key, float("nan"))) for r in recon if r["latent"] == "x1_hat"]
        a2.plot(*zip(*pts), "-o", label="decode(x1_hat(x_t, t))")
        clean = [r.get(key, float("nan")) for r in recon if r["latent"] == "z0"]
        if clean:
            a2.axhline(clean[0], linestyle="--", color="grey", label="decode(z0)")
        a2.set_ylim(*readable_limits([v for _, v in pts] + clean[:1]))
        a2.set_ylabel(key)
        a2.legend(fontsize="small")
    a2.set_xlabel("t of x_t = t z0 + (1 - t) eps")
    groups = [g for g in report["entropy_totals"] if g["kind"] != "all"]
    x = range(len(groups))
    a3.bar([i - 0.2 for i in x], [g["mb_init"] for g in groups], width=0.4, label="fresh init")
    a3.bar([i + 0.2 for i in x], [g["mb_trained"] for g in groups], width=0.4, label="trained")
    a3.set_xticks(list(x), [f"{g['part']} {g['kind']}" for g in groups], fontsize="x-small", rotation=45,
                  ha="right")
    a3.set_ylabel(f"description length, MB ({report['bins']}-bin entropy)")
    a3.legend(fontsize="small")
    for ax in (a1, a2, a3):
        ax.grid(alpha=0.3)
    fig.suptitle(f"pathway analysis ({report.get('train_steps', '?')} training steps, {report['num_items']} items)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
