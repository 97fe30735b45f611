"""MP-20 benchmark: UNITE single stage on crystals, the sanity row of real test crystals, and the published
numbers, with the full protocol (SPEC sections 7, 9).

    unite-sci benchmark mp20 [--budget-minutes 10] [--num-samples 1000] [--checkpoint CKPT]
                             [recon=N] [sanity=N] [other_decode=true] [baseline=true]
                             [reference=1000] [coverage=true]
                             [key=value config overrides]

Options without a dot: ``baseline`` (the two-stage row: the same budget, config and protocol with separate
tokenizer and denoiser weights, trained one after the other; skipped with ``--checkpoint``), ``recon`` (test crystals encoded and decoded, default min(1000, samples)), ``sanity``
(real test crystals scored like samples, default 1000; 0 skips), ``other_decode`` (also decode the same
latents with the other ``data.type_decode`` rule, argmax <-> composition, when the model has the head),
``reference`` (test crystals as the reference of CDVAE's density / element-count Wasserstein distances and
coverage, default 1000; 0 skips), ``coverage`` (COV-R / COV-P against that reference, default true).
Every score is computed from files on disk (``*/samples/samples.npz``): ``unite-sci evaluate`` redoes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from unite_sci.config import parse_options
from unite_sci.engine import generate, load_config, load_model, make_adapter, provenance, reconstruct
from unite_sci.files import write_json
from unite_sci.protocol import training_speed, markdown_table, run_protocol, write_report
from unite_sci.schema import non_negative

from unite_sci_benchmarks.published import MP20 as REFERENCES

COLUMNS = ["method", "struct_valid_pct", "comp_valid_pct", "valid_pct", "unique_pct", "novel_pct",
           "elements_per_crystal", "match_rate_pct", "match_rate_ungated_pct", "rmse", "train_steps",
           "num_samples"]
# what a materials scientist checks beside validity (second table: the first is the published layout)
SHAPE_COLUMNS = ["method", "space_group_p1_pct", "space_group_ref_p1_pct", "space_group_tv", "crystal_system_tv",
                 "space_group_distinct", "wdist_density", "wdist_num_elems", "cov_recall_pct", "cov_precision_pct"]
DATA_ROW = {"method": "Data: MP-20 test split, 9,046 crystals, SMACT 2.6 (SPEC measurement)",
            "struct_valid_pct": 100.0, "comp_valid_pct": 91.05, "valid_pct": 91.05}

PROTOCOL = """
- Data, protocol "{protocol}": {data}
- Representation (ADiT): Niggli-reduced cells; atom types, fractional coordinates, lattice lengths / N^(1/3)
  (Angstrom) and angles (degrees), the 6 lattice numbers standardised by training-split statistics. Random
  translation of the fractional coordinates (modulo 1) during training. One register per atom plus one
  lattice register; atom counts of samples drawn from the training distribution.
- Generation: validity as CDVAE: structural = all minimum-image distances > 0.5 A and volume > 0.1 A^3;
  compositional = SMACT {smact} charge neutrality + Pauling electronegativity test (SMACT 2.x default
  oxidation states, as the published numbers; single elements and all-metal alloys valid); overall = both.
  Uniqueness = StructureMatcher groups among valid samples / valid; novelty = unique valid samples that
  match none of the {n_train} training crystals of this protocol / unique. Elements per crystal = mean
  number of distinct elements (the data: about 3.0 on MP-20).
- Reconstruction: the first {recon} test crystals encoded and decoded (no decoder noise); match =
  `StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10).get_rms_dist` finds a match and both crystals are
  valid (ADiT / DiffCSP gate); RMSE = mean normalised RMS displacement ((V / N)^(1/3) units) over matches.
- Types are decoded {decode}.
- Model: the toolkit's CPU preset `{preset}` ({arch}), not the paper's UNITE-S (33M); sampler {solver}
  {steps} steps; single-stage training for {budget}.
- The paper's rows train on the full canonical MP-20 train split (27,136 crystals) for far longer on GPUs;
  "MP-20 offline" trains on about a third as many crystals, so compare the data row first.
"""

SHAPE_PROTOCOL = """- Space groups: pymatgen `SpacegroupAnalyzer` (spglib) at symprec 0.1 A and angle tolerance 5 deg
  on every sample; the distribution over valid samples against the training crystals' (total variation
  over the 230 groups and over the 7 crystal systems, 0 = identical), the share in P1 beside the training
  share, per sample in `per_sample.csv` and as `space_groups.png`.
- Wasserstein distances of density and number of elements (CDVAE) against the first
  `data.wasserstein_reference` test crystals (benchmark option `reference`, default 1,000; 0 skips), and
  COV-R / COV-P (CDVAE's fingerprints and cutoffs, matminer; benchmark option `coverage`, default on) of
  all samples against the same crystals. The real-data row skips both: its crystals are that reference.
"""

DATA_TEXT = {
    True: "train = the MP-20 val split plus the 1,847 train rows whose CIF could be recovered, minus a seeded "
          "10 % held out as validation; test = the full MP-20 test split (9,046 crystals). About 81 % of "
          "val/test rows are the original CDVAE rows, the rest rebuilt from MatterGen's primitive + Niggli "
          "copy of MP-20 (see DATA.md).",
    False: "the canonical CDVAE csv files (train / val / test as distributed).",
}


@dataclass
class CrystalOptions:
    """This benchmark's ``key=value`` words without a dot (see the module docstring)."""

    recon: Optional[int] = non_negative(None)  # test crystals encoded and decoded; None: min(1000, samples)
    sanity: int = non_negative(1000)    # real test crystals scored like samples; 0 skips
    other_decode: bool = True           # also decode the same latents with the other type_decode rule
    baseline: bool = True               # the two-stage row, same budget (not with --checkpoint)
    reference: int = non_negative(1000)  # test crystals as reference of the density / element-count
                                        # Wasserstein distances and COV-R / COV-P; 0 skips them
    coverage: bool = True               # COV-R / COV-P (CrystalNN fingerprints: minutes per thousand crystals)


def distribution_overrides(opts: CrystalOptions, config: list[str]) -> list[str]:
    """The evaluation settings that put CDVAE's distribution metrics into the report, unless the config
    already sets them: ``data.wasserstein_reference`` and ``data.coverage``."""
    given = {o.split("=", 1)[0] for o in config}
    out = []
    if opts.reference and "data.wasserstein_reference" not in given:
        out.append(f"data.wasserstein_reference={opts.reference}")
    if opts.reference and "data.coverage" not in given:
        out.append(f"data.coverage={str(opts.coverage).lower()}")
    return out


def _strip(res: dict[str, Any]) -> dict[str, Any]:
    """``"MP-20 offline/valid_pct"`` -> ``"valid_pct"``."""
    p = res.get("protocol", "")
    return {k[len(p) + 1:] if p and k.startswith(p + "/") else k: v for k, v in res.items()}


def _row(name: str, gen: dict[str, Any], rec: dict[str, Any] | None = None,
         steps: Any = None) -> dict[str, Any]:
    row = {"method": name, **_strip(gen), "train_steps": steps}
    if rec:
        r = _strip(rec)
        row.update(match_rate_pct=r.get("match_rate_pct"), rmse=r.get("rmse"),
                   match_rate_ungated_pct=r.get("match_rate_ungated_pct"))
    return row


def sanity_row(num: int, overrides: list[str]) -> dict[str, Any]:
    """The metrics of real test crystals themselves, through the same evaluation as the samples."""
    # no distribution metrics: the reference is the same first test crystals (COV 100 %, distances 0)
    keep = [o for o in overrides if o.startswith("data.") and not o.startswith(("data.coverage",
                                                                                 "data.wasserstein_reference"))]
    adapter = make_adapter(load_config("mp20", overrides=keep))
    test = adapter.build_splits()["test"]
    n = min(num, len(test))
    gen = adapter.evaluate([test[i] for i in range(n)])
    return _row(f"Data: {n} real test crystals (this toolkit)", gen)


def other_decode_row(checkpoint: str, rule: str, num: int, recon: int, post: list[str], out: Path) -> dict[str, Any]:
    """The same latents (same seed, same test crystals) decoded with another type rule."""
    loaded = load_model(checkpoint, overrides=post + [f"data.type_decode={rule}"])
    model, adapter = loaded.model, loaded.adapter
    samples, info = generate(model, adapter, loaded.cfg.sample, num)
    adapter.export(samples, out / "samples")
    gen = adapter.evaluate(samples, str(out / "per_sample.csv"))
    inputs, recons = reconstruct(model, adapter, "test", recon)
    rec = adapter.evaluate_reconstruction(inputs, recons)
    write_json({"generation": gen, "reconstruction": rec, "sampling": info}, out / "results.json")
    return _row(f"UNITE, type_decode={rule} (same latents)", gen, rec)


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, config = parse_options(CrystalOptions, overrides)
    config = config + distribution_overrides(opts, config)
    post = [o for o in config if o.startswith(("sample.", "data."))]
    budget = budget_minutes or 10.0
    out_p = Path(out)
    recon = min(1000, num_samples or 1000) if opts.recon is None else opts.recon
    u = run_protocol("mp20", out_p / "unite", None if checkpoint else budget, num_samples, checkpoint, config, recon)
    ckpt = checkpoint or u["training"]["checkpoint"]
    loaded = load_model(ckpt, overrides=post)
    adapter, cfg = loaded.adapter, loaded.cfg
    num = u["sampling"]["num_samples"]
    rows = [_row(f"UNITE single-stage (this run), type_decode={cfg.data.type_decode}", u["generation"],
                 u["reconstruction"], u["training"].get("steps"))]
    results = {"unite": u}
    if opts.baseline and checkpoint is None:
        t = run_protocol("mp20", out_p / "two_stage", budget, num_samples, None,
                         config + ["train.mode=two_stage", "model.shared_weights=false"], recon)
        results["two_stage"] = t
        rows.append(_row("Two-stage baseline (this run, same budget)", t["generation"], t["reconstruction"],
                         t["training"].get("steps")))
    if opts.other_decode and cfg.data.composition_weight > 0:
        other = "composition" if cfg.data.type_decode == "argmax" else "argmax"
        rows.append(other_decode_row(ckpt, other, num, u["reconstruction_num"], post, out_p / f"decode_{other}"))
    if opts.sanity:
        rows.append(sanity_row(opts.sanity, config))
    rows.append(DATA_ROW)
    rows += [{"method": k, **v} for k, v in REFERENCES.items()]

    arch = u.get("model", {})
    steps = u.get("train_steps", u["training"].get("steps", "?"))
    wall = u.get("train_wall_s", u["training"].get("elapsed_s", 0)) or 0
    s = u["sampling"]
    protocol = PROTOCOL.format(
        protocol=adapter.protocol, data=DATA_TEXT[cfg.data.data_dir is None], smact=u["generation"]["smact_version"],
        n_train=len(adapter.train_items()) if cfg.data.novelty else "(novelty off)", recon=u["reconstruction_num"],
        decode=("per atom among the elements that the lattice register's composition head predicts present"
                if cfg.data.type_decode == "composition" else "by per-atom argmax") + (
                "; the other rule's row decodes the same latents" if cfg.data.composition_weight > 0 else ""),
        preset=cfg.model.preset, arch=", ".join(f"{k} {arch.get(k)}" for k in ("depth", "width", "heads",
                                                                              "dec_depth", "dec_width", "latent_dim")),
        solver=s["solver"], steps=s["steps"], budget=f"{steps} steps, {float(wall):.0f} s")
    protocol += SHAPE_PROTOCOL
    settings = (f"- Training: {steps} steps in {float(wall):.0f} s, {training_speed(ckpt)} training crystals/s "
                f"(mean of the logged rates), batch {cfg.train.batch_size}, on {u.get('machine', {}).get('processor')}"
                f" with {u.get('machine', {}).get('torch_threads')} torch threads\n"
                f"- Samples: {num}{' (fewer than the usual 10,000: CPU run)' if num < 10000 else ''}; solver "
                f"{s['solver']} {s['steps']} steps, seed {s['seed']}, {s['samples_per_s']} crystals/s\n"
                f"- Reconstruction on {u['reconstruction_num']} test crystals\n"
                f"- Evaluation wall time: {u.get('evaluation_wall_s')}\n"
                f"- Checkpoint sha256 {u.get('checkpoint_sha256')}; model {arch}\n"
                f"- Library versions: {u.get('library_versions')}")
    sections = [(f"Results, protocol \"{adapter.protocol}\" (percent; RMSE in (V/N)^(1/3) units)",
                 markdown_table(rows, COLUMNS)),
                ("Symmetry and distributions", markdown_table([r for r in rows if "space_group_tv" in r or
                                                               "wdist_density" in r], SHAPE_COLUMNS)),
                ("Settings", settings), ("Protocol", protocol)]
    data = {"rows": rows, "results": results, "protocol": protocol, "protocol_name": adapter.protocol,
            **provenance()}
    return write_report(out, f"unite-sci benchmark: {adapter.protocol}", sections, data)
