"""Where compositional validity is lost: each SMACT-invalid sample sorted into one cause, against the data.

    python -m unite_sci_modalities.crystals.composition_errors --samples FOLDER [--reference test] [--out FILE.md]

Causes, checked in this order for every sample whose composition fails SMACT (the CDVAE/ADiT test):
- ``unseen_pair``: two of its elements never occur together in any training crystal of the protocol;
- ``unseen_set``: every pair occurs somewhere, but this whole element set occurs in no training crystal;
- ``stoichiometry``: the element set is a training crystal's, the counts do not balance;
and beside them the valid share by number of distinct elements and by atom count (bins, then odd / even), for
the samples and for real crystals of the ``--reference`` split scored alike, so that a cause is read against
the data's own failures (9 % of real MP-20 test crystals fail SMACT too).
"""
from __future__ import annotations

import argparse
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np


def classify(samples: list, train: list, valid_comp: np.ndarray) -> list[str]:
    """One cause per sample ('' when its composition is valid), see the module docstring."""
    sets = {frozenset(int(a) for a in np.unique(t[0])) for t in train}
    pairs = {p for s in sets for p in combinations(sorted(s), 2)}
    out = []
    for s, ok in zip(samples, valid_comp):
        if ok:
            out.append("")
            continue
        el = sorted({int(a) for a in np.unique(s[0])})
        if any(p not in pairs for p in combinations(el, 2)):
            out.append("unseen_pair")
        elif frozenset(el) not in sets:
            out.append("unseen_set")
        else:
            out.append("stoichiometry")
    return out


def by_group(keys: list[int], valid: np.ndarray, groups: list[tuple[str, set]]) -> dict[str, tuple[float, float]]:
    """Share of items in each group and the valid share inside it (percent)."""
    res = {}
    keys = np.asarray(keys)
    for name, members in groups:
        m = np.isin(keys, list(members))
        res[name] = (100 * m.mean(), 100 * valid[m].mean() if m.any() else float("nan"))
    return res


def table(samples: list, reference: list, train: list, workers: int = 0) -> str:
    from .metrics import validity

    v_s = validity(samples, workers, 30.0, progress=False)
    v_r = validity(reference, workers, 30.0, progress=False)
    causes = classify(samples, train, v_s.comp)
    causes_r = classify(reference, train, v_r.comp)
    n, nr = len(samples), len(reference)
    lines = ["| cause of a SMACT failure | samples (% of all) | real crystals (% of all) |", "|---|---|---|"]
    for c in ("unseen_pair", "unseen_set", "stoichiometry"):
        lines.append(f"| {c} | {100 * causes.count(c) / n:.1f} | {100 * causes_r.count(c) / nr:.1f} |")
    lines.append(f"| compositionally valid | {100 * v_s.comp.mean():.1f} | {100 * v_r.comp.mean():.1f} |")
    ne_s = [len(np.unique(s[0])) for s in samples]
    ne_r = [len(np.unique(s[0])) for s in reference]
    groups = [("1", {1}), ("2", {2}), ("3", {3}), ("4", {4}), ("5+", set(range(5, 100)))]
    gs, gr = by_group(ne_s, v_s.comp, groups), by_group(ne_r, v_r.comp, groups)
    lines += ["", "| distinct elements | samples: share / comp. valid % | real: share / comp. valid % |",
              "|---|---|---|"]
    lines += [f"| {g} | {gs[g][0]:.1f} / {gs[g][1]:.1f} | {gr[g][0]:.1f} / {gr[g][1]:.1f} |" for g, _ in groups]
    na_s = [len(s[0]) for s in samples]
    na_r = [len(s[0]) for s in reference]
    bins = [("1-4", set(range(1, 5))), ("5-8", set(range(5, 9))), ("9-12", set(range(9, 13))),
            ("13-16", set(range(13, 17))), ("17-20", set(range(17, 21)))]
    gs, gr = by_group(na_s, v_s.comp, bins), by_group(na_r, v_r.comp, bins)
    lines += ["", "| atoms per cell | samples: share / comp. valid % | real: share / comp. valid % |", "|---|---|---|"]
    lines += [f"| {g} | {gs[g][0]:.1f} / {gs[g][1]:.1f} | {gr[g][0]:.1f} / {gr[g][1]:.1f} |" for g, _ in bins]
    # an odd count leaves fewer charge-balanced stoichiometries (no A1B1 / A2B3 multiples): the data pays too
    parity = [("odd", set(range(1, 200, 2))), ("even", set(range(2, 200, 2)))]
    gs, gr = by_group(na_s, v_s.comp, parity), by_group(na_r, v_r.comp, parity)
    lines += [f"| {g} | {gs[g][0]:.1f} / {gs[g][1]:.1f} | {gr[g][0]:.1f} / {gr[g][1]:.1f} |" for g, _ in parity]
    top = Counter(tuple(sorted({int(a) for a in np.unique(s[0])})) for s, c in zip(samples, causes) if c)
    from pymatgen.core import Element
    lines += ["", "Most common element sets among invalid samples: " + ", ".join(
        f"{'-'.join(Element.from_Z(z).symbol for z in k)} ({v})" for k, v in top.most_common(8))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from unite_sci.engine import load_config, make_adapter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", required=True, help="a folder written by `unite-sci sample`")
    ap.add_argument("--reference", default="test", help="the split scored alike (default: test)")
    ap.add_argument("--num-reference", type=int, default=1000, help="its first N crystals (default: 1000)")
    ap.add_argument("--out", help="write the markdown table here too")
    args = ap.parse_args(argv)
    adapter = make_adapter(load_config("mp20"))
    samples = [tuple(s[:4]) for s in adapter.load_samples(Path(args.samples))]
    ref = adapter.build_splits()[args.reference]
    reference = [tuple(ref[i][:4]) for i in range(min(args.num_reference, len(ref)))]
    train = [tuple(t[:4]) for t in adapter.train_items()]
    text = (f"{len(samples)} samples of '{args.samples}', {len(reference)} {adapter.protocol} {args.reference} "
            f"crystals; element sets and pairs from the {len(train)} training crystals\n\n"
            + table(samples, reference, train))
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
