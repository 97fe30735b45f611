"""The crystal physics protocol checked on real crystals: does "CHGNet, MP-20 hull" put DFT-stable test
crystals near their DFT energies above the hull, and does it fail a corrupted copy?

    unite-sci benchmark mp20-hull [--num-samples 100] [--out runs/benchmark_mp20-hull] [noise=0.5] [seed=0]

The first ``--num-samples`` test crystals of the protocol (seeded draw) that carry a DFT ``e_above_hull``
are relaxed through the same pipeline as samples (``unite-sci relax``: CHGNet, FIRE, fmax 0.1 eV/A), their
energies turned into formation energies with the shipped elemental references, and measured against a hull
built WITHOUT the test rows (train + val rows only). Rows: the real-data floor (MAE against DFT, share
metastable by both), and the same crystals with Gaussian noise of ``noise`` Angstrom on every atom, scored
unrelaxed (a corrupted row that must fail). Writes report.md / report.json, relax.csv and e_hull.png.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unite_sci.config import parse_options
from unite_sci.engine import load_config, make_adapter, provenance
from unite_sci.errors import UserError
from unite_sci.physics import write_rows
from unite_sci.protocol import markdown_table, write_report
from unite_sci.schema import non_negative


@dataclass
class HullOptions:
    noise: float = non_negative(0.5)   # Angstrom, the corrupted row
    seed: int = 0


def _dft_hull(files: list[Path]) -> dict[str, float]:
    import csv
    import gzip

    out = {}
    for path in files:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("e_above_hull"):
                    out[row["material_id"]] = float(row["e_above_hull"])
    return out


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    from unite_sci_modalities.crystals import physics as cphys
    from unite_sci_modalities.crystals.hull import METASTABLE, PROTOCOL, STABLE, References
    from unite_sci_modalities.crystals.stability import hull_files, load_hull

    if checkpoint or budget_minutes:
        raise UserError("mp20-hull checks the protocol on real crystals: it takes no checkpoint or budget")
    opts, config = parse_options(HullOptions, list(overrides))
    adapter = make_adapter(load_config("mp20", overrides=config))
    c = adapter.cfg
    test = adapter.build_splits()["test"]
    files = [p for p in hull_files(adapter) if p.name.startswith("test")]
    dft = _dft_hull(files)
    have = [i for i in range(len(test)) if test.ids[i] in dft]
    rng = np.random.default_rng(opts.seed)
    idx = np.sort(rng.choice(have, size=min(num_samples or 100, len(have)), replace=False))
    crystals = test.subset(idx)
    ids = [crystals.ids[i] for i in range(len(crystals))]
    hull = load_hull(adapter, exclude_ids=set(test.ids))  # no test row in the hull
    refs = References.load()
    settings = cphys.RelaxSettings(c.relax_optimizer, c.relax_fmax, c.relax_steps, c.relax_cell)
    t0 = time.time()
    rows = cphys.relax_all(list(crystals), settings, adapter._workers(), c.relax_time_limit_s)
    relax_s = time.time() - t0
    e_rel = np.array([r["energy_after_ev_per_atom"] for r in rows], dtype=float)
    zs = list(crystals.z)
    _, eh = cphys.e_above_hull(zs, e_rel, refs, hull)
    truth = np.array([dft[i] for i in ids])
    noisy = []
    for k in range(len(crystals)):
        z, frac, lengths, angles = crystals[k][:4]
        from pymatgen.core import Lattice
        lat = Lattice.from_parameters(*lengths, *angles)
        shift = lat.get_fractional_coords(rng.normal(0, opts.noise, (len(z), 3))) if len(z) else 0
        noisy.append((z, (frac + shift) % 1.0, lengths, angles))
    _, eh_noisy = cphys.e_above_hull(zs, cphys.static_energies(noisy, progress=False), refs, hull)
    ok = np.isfinite(eh)

    def row(name: str, e: np.ndarray) -> dict[str, Any]:
        good = np.isfinite(e)
        return {"row": name, "n": int(good.sum()),
                "mae_vs_dft": round(float(np.mean(np.abs(e[good] - truth[good]))), 4) if good.any() else None,
                "median_abs_err": round(float(np.median(np.abs(e[good] - truth[good]))), 4) if good.any() else None,
                "median_e_hull": round(float(np.median(e[good])), 4) if good.any() else None,
                "stable_pct": round(100 * float(np.mean(e[good] <= STABLE)), 1) if good.any() else None,
                "metastable_pct": round(100 * float(np.mean(e[good] <= METASTABLE)), 1) if good.any() else None}

    table = [row("real test crystals, CHGNet-relaxed (floor)", eh),
             row(f"same crystals, {opts.noise} A noise, unrelaxed (must fail)", eh_noisy),
             {"row": "DFT e_above_hull of the same crystals (Materials Project hull)", "n": len(truth),
              "median_e_hull": round(float(np.median(truth)), 4),
              "stable_pct": round(100 * float(np.mean(truth <= STABLE)), 1),
              "metastable_pct": round(100 * float(np.mean(truth <= METASTABLE)), 1)}]
    out_dir = Path(out)
    write_rows(out_dir / "relax.csv", [{"material_id": i, **{k: v for k, v in r.items() if k != "arrays"},
                                        "e_hull_ev_per_atom": e, "dft_e_above_hull_ev_per_atom": d}
                                       for i, r, e, d in zip(ids, rows, eh, truth)])
    cphys.plot_e_hull({"CHGNet-relaxed test crystals": eh, "DFT (MP hull)": truth,
                       f"{opts.noise} A noise, unrelaxed": eh_noisy}, out_dir / "e_hull.png")
    secs = [r["seconds"] for r in rows]
    cost = (f"CHGNet relaxation: median {np.median(secs):.1f} s per crystal (one process per core, "
            f"{adapter._workers()} processes, {relax_s:.0f} s wall for {len(rows)}); "
            f"{sum(bool(r['converged']) for r in rows)} of {len(rows)} converged; "
            f"{sum(not r['error'] for r in rows)} relaxed without error")
    text = (f"Protocol \"{PROTOCOL}\": hull of {len(hull)} DFT formation energies (train + val rows only), "
            f"{refs.meta.get('summary', '')}.\n\n" + markdown_table(table, ["row", "n", "mae_vs_dft", "median_abs_err",
                                                                           "median_e_hull", "stable_pct", "metastable_pct"])
            + f"\n{cost}\n\nEnergies in eV/atom. Unknown E_hull (an element without a reference): {int((~ok).sum())}.")
    write_report(out_dir, "MP-20 hull check on real test crystals", [("Rows", text)],
                 {"rows": table, "cost": cost, "options": vars(opts), "relax_settings": vars(settings),
                  "num": len(rows), **provenance()})
    print(text)
    return out_dir
