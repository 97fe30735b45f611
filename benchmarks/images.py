"""Image benchmark: train (or load), sample class-balanced at one or more CFG scales, score each scale in the
data set's own classifier features (fd_<set>, precision / recall, class agreement; opt-in Inception gFID),
reconstruction PSNR / LPIPS (opt-in rFID), PNG grids, and the paper's ImageNet anchors (SPEC sections 8, 9).

    unite-sci benchmark images [--budget-minutes 5] [--num-samples 100] [--checkpoint CKPT]
                               [cfg_sweep=1.0,2.0,3.0] [recon=N] [sanity=N] [key=value config overrides]

Options without a dot: ``cfg_sweep`` (guidance scales, default: the config's ``sample.cfg``), ``recon``
(test images reconstructed for rFID / PSNR / LPIPS, default = the sample count), ``sanity`` (real test
images scored like samples: every metric's floor at this sample count, default = the sample count; 0 skips it).
Every score is computed from files on disk (``cfg_*/samples/samples.npz``): ``unite-sci evaluate`` redoes it.

    unite-sci benchmark images --budget-minutes 20 --num-samples 2000 seeds=0,1 jobs=2 threads=1
                               [candidates=unite,two_stage,pixel_unet] [peer_channels=16,32,32] [rescore=true]

With ``seeds=`` the benchmark is a study (``benchmarks/study.py``): the rows of :data:`ROWS` side by side,
each trained once per seed at the same budget and scored alike, mean [min-max] per metric, with the
real-data floor at the same sample count. Finished jobs are kept; ``rescore=true`` samples and scores them
again without training (new metrics on old runs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Optional

from unite_sci.config import parse_options
from unite_sci.engine import load_config, load_model, make_adapter, provenance, reconstruct, train
from unite_sci.errors import UserError
from unite_sci.protocol import training_speed, markdown_table, run_protocol, write_report
from unite_sci.schema import non_negative

from unite_sci_benchmarks.published import IMAGES as REFERENCES
from unite_sci_benchmarks.study import METRICS, StudyOptions, _row, run_study
from unite_sci_modalities.images.adapter import SPLITS
from unite_sci_modalities.images.domain import intervals_separate
from unite_sci_modalities.images.io import save_reconstruction_grid

# fd_<set> (named after the data set, see gen_columns) comes first; gfid is empty unless data.fid=true
GEN_METRICS = ["precision", "recall", "class_agreement", "pixel_diversity", "gfid", "nn_train_rmse"]
GEN_COLUMNS = ["method", "cfg", "num_samples", *GEN_METRICS, "samples_per_s", "best"]
REC_COLUMNS = ["method", "rfid", "psnr_db", "lpips", "num_images"]
ANCHOR_COLUMNS = ["method", "rfid", "gfid"]

PROTOCOL = """
- Data: {dataset} ({splits}); images brought to {size} x {size} px by fit={fit} (pad: zero borders, pixels
  untouched), {channels} channel(s); patch {patch} -> {tokens} patch tokens and {tokens} registers (an {side} x {side} latent grid of {latent} channels).
- Decision metrics: {num} class-balanced samples (label i % 10) in the features of the data set's own classifier
  ({classifier}; test accuracy {accuracy}; shipped for Fashion-MNIST, modalities/images/feature_net.py, else
  trained once on the training split and cached): {fd} = Fréchet distance to the features of all {fd_ref}
  training images, with a 95 % bootstrap interval over the samples ({fd}_ci95); a row is marked best only where
  its interval separates from every other row's ("tied" where they overlap); precision / recall (Kynkäänniemi et al. 2019, k = {k}) against
  {pr_ref} seeded training images (equal counts, as in the paper); class_agreement = share of samples the classifier
  assigns to the requested class; pixel_diversity = mean within-class pairwise L2 distance, pixels in [0, 1].
  The "Data" row (real test images at the same count) is each metric's floor: its class_agreement is the
  classifier's accuracy on those images.
- Reconstruction: the first {recon} test images encoded and decoded (no decoder noise), PSNR (dB, mean per
  image, on uint8 pixels), LPIPS (mean) and, with data.fid=true, rFID against those inputs.
- Inception gFID (opt-in, data.fid=true; here: {inception}): against statistics of {ref}; preprocessing
  {preprocessing}. On these CPUs Inception runs at about 6 images per CPU-second (statistics of the whole
  60,000-image training split: about 170 CPU-minutes), so it is not a default column. FID at a few hundred
  samples is biased upwards and comparable only at equal sample and reference counts, never with the
  50,000-sample ImageNet numbers.
- LPIPS: {lpips}.
- nn_train_rmse: mean pixel RMSE ([0, 1] units) from each sample to its nearest of the first {nn} training images
  (memorisation check: real test images give the reference value).
- Model: the toolkit's CPU preset `{preset}` ({arch}), not the paper's UNITE-B/L; sampler {solver}
  {steps} steps, CFG on the interval {interval}; single-stage training for {budget}.
"""


# The rows of `benchmark images seeds=...`, each trained per seed at the same budget (a study's candidates).
ROWS: dict[str, tuple[list[str], str]] = {
    "unite": ([], "UNITE single stage as configured (configs/images.yaml: separate encoder and denoiser)"),
    "unite_shared": (["model.shared_weights=true"], "UNITE as published: one weight-shared Generative Encoder"),
    "two_stage": (["train.mode=two_stage", "model.shared_weights=false"],
                  "two-stage: tokenizer for half the budget, then a denoiser on its frozen latents"),
    "pixel_unet": (["peer:pixel_unet"], "pixel-space peer: diffusers UNet2DModel on pixels, UNITE's flow objective, "
                                        "sampler and budget (benchmarks/pixel_peer.py)"),
}
NO_DIFFUSERS = "skipped: diffusers not installed (pip install 'unite-sci[bench]')"

PROTOCOL_ROWS = """
- Every row trains for the same wall-clock budget per seed, one job per (row, seed), `jobs` at a time with
  `threads` torch threads each (wall_s: the training seconds each row got; train_steps: the steps it made).
- Two-stage: the same GE code and size with separate encoder and denoiser weights; the first half of the
  budget trains the tokenizer (reconstruction loss only), the second half the denoiser on its frozen latents.
- Pixel-space peer: a diffusers `UNet2DModel` on the pixels in [-1, 1] with UNITE's flow objective
  (`unite_sci/flow.py`: the same time convention, logit-normal t and shift, prediction type, loss weighting,
  label dropout), the config's optimiser settings, EMA, batch and data order, and UNITE's sampler
  (`unite_sci/sampling.py`: solver, steps, time shift, CFG scale and interval); its samples are scored from
  the same `samples.npz` format. It has no reconstruction (psnr_db, rfid: –).
- Samples: class-balanced (label i % 10), the same count and sampler seed for every row.
- Columns: the image evaluation's keys (`study.METRICS["images"]`): fd is the Frechet distance in the
  features of the data set's own classifier (`fd_<set>` in results.json), then precision, recall, class
  agreement, within-class pixel diversity, the opt-in Inception gFID, the nearest-training-image RMSE.
"""


@dataclass
class ImageOptions(StudyOptions):
    """This benchmark's ``key=value`` words without a dot (see the module docstring); ``seeds`` makes it a
    study of :data:`ROWS` (the study options then apply). ``recon`` (test images reconstructed) defaults to
    the sample count for one run and to the study's 200 per seed."""

    cfg_sweep: list[float] = field(default_factory=list)  # guidance scales; empty: the config's sample.cfg
    sanity: Optional[int] = non_negative(None)  # real test images scored like samples; None: the sample count
    peer_channels: list[int] = field(default_factory=list)  # the peer UNet's block_out_channels; empty: (16, 32, 32)


def scores(gen: dict[str, Any]) -> dict[str, Any]:
    """A generation result's table columns: the count, ``fd_<set>`` with its bootstrap interval
    ``fd_<set>_ci95`` ("lo-hi"), :data:`GEN_METRICS` (None when absent)."""
    fd: dict[str, Any] = {}
    for key, value in gen.items():
        if key.startswith("images/fd_"):
            name = key.split("/", 1)[1]
            interval = gen.get(f"{name}_ci95")
            fd[name] = value
            fd[f"{name}_ci95"] = f"{interval[0]:.3g}-{interval[1]:.3g}" if interval else None
            fd[f"_{name}_interval"] = tuple(interval) if interval else None  # for mark_best; not a column
    return {"num_samples": gen.get("num_samples"), **fd, **{m: gen.get(f"images/{m}") for m in GEN_METRICS}}


def mark_best(rows: list[dict[str, Any]], column: str) -> dict[str, Any] | None:
    """The row with the lowest ``column`` (an fd) when its bootstrap interval separates from every other
    scored row's, marked ``best``; else None, and the rows whose intervals overlap the lowest one's are marked
    ``tied``: an fd difference inside the sampling noise ranks nothing. A row without an interval is never
    best against another row."""
    scored = [row for row in rows if row.get(column) is not None]
    if not scored:
        return None
    low = min(scored, key=lambda row: row[column])
    key = f"_{column}_interval"
    others = [row for row in scored if row is not low]
    tied = [row for row in others if not intervals_separate(low.get(key), row.get(key))]
    if tied:
        for row in [low, *tied]:
            row["best"] = "tied"
        return None
    low["best"] = "best"
    return low


def gen_columns(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`GEN_COLUMNS` with the rows' ``fd_<set>`` column(s) after the sample count."""
    fds = list(dict.fromkeys(k for row in rows for k in row if k.startswith("fd_")))  # fd, then its interval
    return GEN_COLUMNS[:3] + fds + GEN_COLUMNS[3:]


def real_data_row(adapter: Any, num: int) -> dict[str, Any]:
    """Real test images scored as if they were samples: every metric's floor at this sample count."""
    test = adapter.build_splits()["test"]
    n = min(num, len(test))
    real = adapter.batch_to_domain(adapter.collate([test[i] for i in range(n)]))
    gen = adapter.evaluate(real)
    return {"method": f"Data: {n} real test images", "cfg": None, **scores(gen), "metrics": gen}


def real_data_section(config: list[str], num: int) -> list[tuple[str, str]]:
    """A study's real-data floor: ``num`` real test images scored as samples, in the study's image columns."""
    if not num:
        return []
    adapter = make_adapter(load_config("images", overrides=[o for o in config if o.startswith("data.")]))
    row = real_data_row(adapter, num)
    cols = {k: v for k, v in METRICS["images"].items() if v[0] == "generation"}
    table = markdown_table([{"method": row["method"], **_row({"generation": row["metrics"]}, cols)}], ["method", *cols])
    return [(f"Real data: the floor at {row['num_samples']} images", table)]


def run_seeds(out: str, budget: float, num: int, opts: ImageOptions, config: list[str]) -> Path:
    """:data:`ROWS` at several seeds through the study runner, with the real-data floor."""
    if len(opts.cfg_sweep) > 1:
        raise UserError("seeds= scores one guidance scale per row: give cfg_sweep one value (or sample.cfg=W)")
    config = config + [f"sample.cfg={w:g}" for w in opts.cfg_sweep]
    rows = dict(ROWS)
    if opts.peer_channels:
        channels = ",".join(str(c) for c in opts.peer_channels)
        rows["pixel_unet"] = ([f"peer:pixel_unet:{channels}"], f"{ROWS['pixel_unet'][1]}, channels {channels}")
    skipped = {} if find_spec("diffusers") else {"pixel_unet": NO_DIFFUSERS}
    sanity = num if opts.sanity is None else opts.sanity

    def extra() -> list[tuple[str, str]]:  # after the timed jobs, so that it never competes with them
        return [*real_data_section(config, sanity), ("Rows", PROTOCOL_ROWS)]

    return run_study("images", "images", rows, out, [budget], num, opts, config, extra, skipped=skipped)


def reconstruction_grid(model: Any, adapter: Any, path: Path, num: int = 32) -> Path:
    """PNG: the first ``num`` test images beside their reconstructions, 8 pairs per row."""
    inputs, recons = reconstruct(model, adapter, "test", num, progress=False)
    return save_reconstruction_grid(adapter.stack(inputs), adapter.stack(recons), path, pairs_per_row=8, scale=2)


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, config = parse_options(ImageOptions, overrides)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    base = load_config("images", overrides=config)
    num = num_samples or base.sample.num
    if opts.seeds is not None:
        if checkpoint:
            raise UserError("seeds= trains one run per row and seed; it takes no --checkpoint")
        return run_seeds(out, budget_minutes or base.train.budget_minutes or 5.0, num, opts, config)
    scales = opts.cfg_sweep or [base.sample.cfg]
    recon = num if opts.recon is None else opts.recon
    train_summary: dict[str, Any] = {}
    post = config  # with --checkpoint, load_model refuses anything but sample.* and data.*
    if checkpoint is None:
        budget = budget_minutes or base.train.budget_minutes or 5.0
        cfg = load_config("images", overrides=config + [f"out={out_p / 'train'}", f"train.budget_minutes={budget}",
                                                        "train.max_steps=0"])
        train_summary = train(cfg)
        checkpoint = train_summary["checkpoint"]
        post = [o for o in config if o.startswith(("sample.", "data."))]

    # one protocol run per guidance scale; reconstruction does not depend on it: only the first scores it
    results = {w: run_protocol("images", out_p / f"cfg_{w:g}", None, num, checkpoint, post + [f"sample.cfg={w}"],
                               recon_num=recon if i == 0 else 0) for i, w in enumerate(scales)}
    first = results[scales[0]]
    gen_rows = [{"method": "UNITE (this run)", "cfg": w, **scores(r["generation"]),
                 "samples_per_s": r["sampling"]["samples_per_s"], "best": ""} for w, r in results.items()]
    decide = next((c for c in gen_columns(gen_rows) if c.startswith("fd_")), "gfid")  # the domain FD; else gFID
    best = mark_best(gen_rows, decide) if decide.startswith("fd_") else None
    # the checkpoint's own data settings (with any data.* override), as the samples were scored with
    loaded = load_model(checkpoint, overrides=[o for o in post if o.startswith("data.")])
    model, adapter = loaded.model, loaded.adapter
    sanity = num if opts.sanity is None else opts.sanity
    if sanity:
        gen_rows.append(real_data_row(adapter, sanity))
    rec = first["reconstruction"]
    rec_rows = [{"method": "UNITE (this run)", "rfid": rec.get("reconstruction/rfid"),
                 "psnr_db": rec.get("reconstruction/psnr_db"), "lpips": rec.get("reconstruction/lpips"),
                 "num_images": first["reconstruction_num"]}]
    anchors = [{"method": f"{k}: a different data set and scale, not comparable", **v} for k, v in REFERENCES.items()]
    rec_grid = reconstruction_grid(model, adapter, out_p / "reconstructions.png")

    d, model_cfg, gen, sampling = adapter.cfg, first.get("model", {}), first["generation"], first["sampling"]
    speed = training_speed(checkpoint)
    steps, wall = first.get("train_steps"), first.get("train_wall_s")
    protocol = PROTOCOL.format(
        dataset=d.dataset, splits=SPLITS[d.dataset], size=d.image_size, channels=adapter.channels,
        patch=d.patch_size, tokens=adapter.layout.count, side=adapter.side, latent=model_cfg.get("latent_dim"),
        num=num, ref=gen.get("gfid_reference", "-"), fit=d.fit, recon=first["reconstruction_num"],
        inception=gen.get("inception", "not run (data.fid=false)"), preprocessing=gen.get("fid_preprocessing", "-"),
        classifier=gen.get("classifier", "not run (data.domain_metrics=false)"),
        accuracy=f"{gen['classifier_test_accuracy']:.2%} on {gen['classifier_test_images']}"
        if gen.get("classifier_test_accuracy") is not None else "-",
        fd=decide, fd_ref=gen.get(f"{decide}_reference_images", "-"), k=gen.get("pr_k", "-"),
        pr_ref=gen.get("pr_reference_images", "-"),
        lpips=rec.get("lpips_weights", "-"), nn=gen.get("nn_train_reference"), preset=model_cfg.get("preset"),
        arch=", ".join(f"{k} {model_cfg.get(k)}" for k in ("depth", "width", "heads", "dec_depth", "dec_width")),
        solver=sampling["solver"], steps=sampling["steps"], interval=sampling["cfg_interval"],
        budget=f"{steps} steps in {wall} s" if steps is not None else "an unknown budget")
    machine = first.get("machine", {})
    best_text = (f"; best {decide} at CFG {best['cfg']:g} (95 % intervals separate)" if best else
                 f"; no CFG scale ranked: {decide} has no interval" if not decide.startswith("fd_") and len(scales) > 1
                 else f"; no CFG scale's {decide} is best: the 95 % bootstrap intervals overlap" if len(scales) > 1
                 else "")
    settings = (f"- Checkpoint {checkpoint} (sha256 {first.get('checkpoint_sha256')}), EMA weights: {first.get('ema')}\n"
                f"- Training: {steps} steps, {wall} s wall, {speed} training images/s (batch {_batch(first)}), "
                f"{machine.get('processor')}, {machine.get('torch_threads')} torch thread(s)\n"
                f"- Sampling: {sampling['solver']} {sampling['steps']} steps, seed {sampling['seed']}, {num} samples "
                f"per scale, CFG scales {', '.join(f'{w:g}' for w in scales)}{best_text}\n"
                f"- Library versions: {first.get('library_versions')}")
    files = [f"- Samples at CFG {w:g} (one row per class): `cfg_{w:g}/samples/grid.png`, `cfg_{w:g}/samples/samples.npz`"
             for w in results] + [f"- Test images beside their reconstructions: `{rec_grid.name}`"]
    sections = [(f"Generation ({num} samples per row, real data at the same count; {decide} lower, precision, recall "
                 "and class agreement higher are better)", markdown_table(gen_rows, gen_columns(gen_rows))),
                (f"Reconstruction ({first['reconstruction_num']} test images)", markdown_table(rec_rows, REC_COLUMNS)),
                ("Paper anchors (ImageNet 256 x 256, 50,000 samples; not comparable)",
                 markdown_table(anchors, ANCHOR_COLUMNS)),
                ("Settings", settings), ("Protocol", protocol), ("Files", "\n".join(files))]
    data = {"generation": gen_rows, "reconstruction": rec_rows, "paper_anchors": anchors,
            "best_cfg": best["cfg"] if best else None, "training": train_summary,
            "training_samples_per_s": speed, "results": {f"{w:g}": r for w, r in results.items()},
            "protocol": protocol, **provenance()}
    return write_report(out_p, "unite-sci benchmark: images", sections, data)


def _batch(result: dict[str, Any]) -> Any:
    """The training batch size recorded in a result's saved config."""
    import yaml

    return yaml.safe_load(result.get("config", "{}")).get("train", {}).get("batch_size")
