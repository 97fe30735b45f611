"""MP-20 crystal structure prediction (composition given) and chemical-system-conditioned generation.

    unite-sci benchmark mp20-csp --budget-minutes 30 --num-samples 1000 [chemsys=500] [scales=1,2]
    unite-sci benchmark mp20-csp --checkpoint runs/x/checkpoints/last.pt ...   # a model trained with
                                                                             # data.condition_on=[composition,chemsys]

One model learns with both conditions (``data.condition_on=[composition,chemsys]``, each dropped
independently for guidance). CSP, as DiffCSP and FlowMM evaluate it: for each of the first ``num`` test
crystals, one structure generated from its composition (atom i's element given, the decoded types fixed to
it); match with pymatgen's StructureMatcher (stol 0.5, ltol 0.3, angle_tol 10) against that test crystal,
counting a pair only when both are valid (DiffCSP's gate; the ungated rate beside it); RMSE = mean
normalised RMS displacement of the matched pairs. Chemical system: for each of the first ``chemsys`` test
crystals, a sample given only its set of elements and its atom count; reported as the share of valid
samples whose elements lie inside the requested system (and use all of it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unite_sci.config import parse_options
from unite_sci.engine import generate, load_config, load_model, provenance, train
from unite_sci.errors import UserError
from unite_sci.files import write_json
from unite_sci.protocol import markdown_table, write_report
from unite_sci.schema import non_negative

from unite_sci_benchmarks.published import MP20_CSP
from unite_sci_modalities.crystals.conditioning import pad_types

CONDITIONS = ["data.condition_on=[composition,chemsys]"]


@dataclass
class CSPOptions:
    chemsys: int = non_negative(500)   # test chemical systems sampled (0: skip)
    scales: list[float] = field(default_factory=lambda: [1.0])  # guidance scales


def csp(loaded, test: list, scale: float, out: Path) -> dict[str, Any]:
    """One structure per test composition, matched against the test crystal."""
    from unite_sci_modalities.crystals.metrics import reconstruction_metrics

    adapter, cfg = loaded.adapter, loaded.cfg
    ids, sizes = pad_types([np.asarray(c.z) - 1 for c in test])
    conds = adapter.conditions.from_types(ids, ids >= 0)
    cfg.sample.cfg = scale
    samples, info = generate(loaded.model, adapter, cfg.sample, len(test), conds=conds, sizes=sizes)
    adapter.export(samples, out / "samples")
    same = float(np.mean([sorted(s.z.tolist()) == sorted(np.asarray(c.z).tolist()) for s, c in zip(samples, test)]))
    rec = reconstruction_metrics(test, samples, adapter._workers(), protocol=adapter.protocol,
                                 time_limit_s=adapter.cfg.time_limit_s, oxidation_states=adapter.cfg.oxidation_states,
                                 per_pair_csv=out / "per_pair.csv", progress=False)
    rec = {k.split("/", 1)[1] if k.startswith(adapter.protocol + "/") else k: v for k, v in rec.items()}
    return {**rec, "composition_kept_pct": 100 * same, "sampling": info}


def chemsys(loaded, test: list, scale: float, out: Path) -> dict[str, Any]:
    """One sample per test chemical system (its atom count given too), judged inside / exactly the system."""
    from unite_sci_modalities.crystals.metrics import validity

    adapter, cfg = loaded.adapter, loaded.cfg
    ids, sizes = pad_types([np.asarray(c.z) - 1 for c in test])
    conds = adapter.conditions.from_types(ids, ids >= 0)
    conds["composition"] = torch.full_like(conds["composition"], -1)  # elements only
    cfg.sample.cfg = scale
    samples, info = generate(loaded.model, adapter, cfg.sample, len(test), conds=conds, sizes=sizes)
    adapter.export(samples, out / "samples")
    v = validity(samples, adapter._workers(), adapter.cfg.time_limit_s, adapter.cfg.oxidation_states, progress=False)
    want = [set(np.unique(c.z).tolist()) for c in test]
    got = [set(np.unique(s.z).tolist()) for s in samples]
    inside = np.array([g <= w for g, w in zip(got, want)])
    exact = np.array([g == w for g, w in zip(got, want)])
    n_valid = max(1, int(v.valid.sum()))
    return {"n": len(test), "valid_pct": 100 * float(v.valid.mean()),
            "inside_system_of_valid_pct": 100 * float((inside & v.valid).sum()) / n_valid,
            "exact_system_of_valid_pct": 100 * float((exact & v.valid).sum()) / n_valid,
            "inside_system_pct": 100 * float(inside.mean()), "sampling": info}


def run(out: str, budget_minutes: float | None = None, num_samples: int | None = None,
        checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    opts, config = parse_options(CSPOptions, overrides)
    out_p = Path(out)
    budget, num = budget_minutes or 30.0, num_samples or 1000
    summary: dict[str, Any] = {}
    if checkpoint is None:
        cfg = load_config("mp20", overrides=config + CONDITIONS + [f"out={out_p / 'train'}", "train.max_steps=0",
                                                                   f"train.budget_minutes={budget}"])
        summary = train(cfg)
        checkpoint = summary["checkpoint"]
    loaded = load_model(checkpoint, overrides=[o for o in config if o.startswith(("sample.", "data."))])
    if getattr(loaded.adapter, "conditions", None) is None or "composition" not in loaded.adapter.conditions.names:
        raise UserError(f"{checkpoint} was not trained with a composition condition (data.condition_on)")
    test_all = loaded.adapter.build_splits()["test"]
    test = [test_all[i] for i in range(min(num, len(test_all)))]
    results: dict[str, Any] = {"csp": {}, "chemsys": {}}
    rows = []
    for w in opts.scales:
        r = csp(loaded, test, w, out_p / f"csp_w{w:g}")
        results["csp"][w] = r
        rows.append({"method": f"UNITE (this run, w={w:g})", "match_rate_pct": r["match_rate_pct"],
                     "rmse": r["rmse"], "match_rate_ungated_pct": r["match_rate_ungated_pct"],
                     "composition_kept_pct": r["composition_kept_pct"], "n": r["n_pairs"]})
    rows += [{"method": k, **v} for k, v in MP20_CSP.items()]
    chem_rows = []
    if opts.chemsys and "chemsys" in loaded.adapter.conditions.names:
        sub = test[:opts.chemsys]
        for w in opts.scales:
            r = chemsys(loaded, sub, w, out_p / f"chemsys_w{w:g}")
            results["chemsys"][w] = r
            chem_rows.append({"method": f"UNITE (this run, w={w:g})", **{k: v for k, v in r.items() if k != "sampling"}})
    write_json(results, out_p / "results.json")
    settings = (f"- Model: {checkpoint}, {loaded.train_steps} steps in {loaded.train_wall_s:.0f} s "
                f"(budget {budget if summary else 'n/a'} min); conditions {loaded.adapter.conditions.names}\n"
                f"- Test crystals: the first {len(test)} of the {loaded.adapter.protocol} test split (of "
                f"{len(test_all)}); the published rows use the whole canonical MP-20 test split\n"
                f"- Sampler: {loaded.cfg.sample.solver} {loaded.cfg.sample.steps} steps, seed {loaded.cfg.sample.seed}; "
                f"guidance scales {opts.scales} (w = 1: none)")
    sections = [("Structure prediction (composition given; percent, RMSE in (V/N)^(1/3) units)",
                 markdown_table(rows, ["method", "match_rate_pct", "rmse", "match_rate_ungated_pct",
                                       "composition_kept_pct", "n"])),
                ("Chemical-system condition (percent)",
                 markdown_table(chem_rows, ["method", "n", "valid_pct", "inside_system_of_valid_pct",
                                            "exact_system_of_valid_pct", "inside_system_pct"]) if chem_rows else "skipped"),
                ("Settings", settings), ("Protocol", __doc__)]
    return write_report(out, "unite-sci benchmark: mp20-csp", sections,
                        {"rows": rows, "chemsys_rows": chem_rows, "results": results, "training": summary,
                         **provenance(loaded)})
