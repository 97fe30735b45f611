"""Fit the elemental references that put CHGNet energies on the scale of MP-20's DFT formation energies.

    python -m unite_sci_modalities.crystals.fit_references [--num-fit 3000] [--num-test 500] [--seed 0]

CHGNet energies (eV/atom) of training crystals of the "MP-20 offline" protocol, as they are (DFT-relaxed
structures), against their DFT ``formation_energy_per_atom``: ``E_chgnet - E_f = sum_el x_el mu_el`` by
least squares (``hull.fit_mu``). Scored on test crystals that the fit never saw. Writes
``chgnet_mp20_refs.json`` beside this file and prints its sha256, which ``hull.REFS_SHA256`` must then hold.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np

from unite_sci.files import atomic_write

from .hull import REFS_FILE, fit_mu, read_formation_energies, References


def _energies_by_id(files) -> dict[str, float]:
    _, ef, ids = read_formation_energies(files)
    return dict(zip(ids, ef.tolist()))


def main(argv: list[str] | None = None) -> None:
    from importlib.metadata import version

    from unite_sci.engine import load_config, make_adapter

    from . import physics as cphys
    from .stability import hull_files

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-fit", type=int, default=3000, help="training crystals fitted (default 3000)")
    ap.add_argument("--num-test", type=int, default=500, help="test crystals scored (default 500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REFS_FILE))
    args = ap.parse_args(argv)

    adapter = make_adapter(load_config("mp20"))
    splits = adapter.build_splits()
    energy_of = _energies_by_id(hull_files(adapter))
    rng = np.random.default_rng(args.seed)
    picked = {}
    for split, n in (("train", args.num_fit), ("test", args.num_test)):
        data = splits[split]
        have = [i for i in range(len(data)) if data.ids[i] in energy_of]
        idx = rng.choice(have, size=min(n, len(have)), replace=False)
        picked[split] = (data.subset(idx), np.array([energy_of[data.ids[i]] for i in idx]))
    t0 = time.time()
    chg = {s: cphys.static_energies(list(c), progress=True) for s, (c, _) in picked.items()}
    seconds = time.time() - t0
    (train, ef_train), (test, ef_test) = picked["train"], picked["test"]
    ok = np.isfinite(chg["train"])
    mu = fit_mu([train.z[i] for i in np.flatnonzero(ok)], chg["train"][ok], ef_train[ok])
    refs = References(mu)

    def mae(c, e, ef):
        pred = np.array([refs.formation_energy(z, x) for z, x in zip(c.z, e)])
        good = np.isfinite(pred)
        return float(np.mean(np.abs(pred[good] - ef[good]))), int(good.sum())

    mae_fit, n_fit = mae(train, chg["train"], ef_train)
    mae_test, n_test = mae(test, chg["test"], ef_test)
    meta = {"chgnet": version("chgnet"), "protocol": adapter.protocol, "seed": args.seed,
            "num_fit": n_fit, "num_test": n_test, "mae_fit_ev_per_atom": round(mae_fit, 4),
            "mae_test_ev_per_atom": round(mae_test, 4), "elements": len(mu),
            "chgnet_seconds": round(seconds, 1),
            "summary": (f"CHGNet {version('chgnet')} energies of {n_fit} {adapter.protocol} training crystals "
                        f"fitted to DFT formation energies ({len(mu)} elemental references); formation-energy "
                        f"MAE {mae_test:.3f} eV/atom on {n_test} test crystals")}
    text = json.dumps({"mu": {str(k): round(v, 6) for k, v in sorted(mu.items())}, "meta": meta}, indent=1)
    atomic_write(args.out, lambda fh: fh.write(text), binary=False)
    print(json.dumps(meta, indent=1))
    print(f"sha256 {hashlib.sha256(text.encode()).hexdigest()}  {args.out}")


if __name__ == "__main__":
    main()
