"""Build QM9's evaluation references ahead of first use: ``make install`` runs this module.

Both are deterministic functions of installed data (the qm9pack CSVs, EDM's split and the installed
OpenBabel / RDKit versions), so building them at install time costs nothing in exactness and makes a first
``unite-sci evaluate --modality qm9`` of one molecule take seconds instead of minutes:

- the novelty reference: ADiT-route SMILES of the 100,000 training molecules (``train_smiles_100000.txt``);
- the geometry reference: bond, angle and valency statistics of the first 10,000 (``geometry_train_10000.npz``).

Each file carries a key (a hash of the molecules' bytes, and for the SMILES of the library versions) and is
rebuilt by the evaluation itself whenever its key no longer matches. Both land under the cache root
(``$UNITE_SCI_CACHE``, else ``~/.cache/unite-sci``)::

    python -m unite_sci_modalities.qm9.references [key=value ...]    # e.g. data.eval_workers=1
"""
from __future__ import annotations

import sys
import time


def build(overrides: list[str] = ()) -> dict[str, float]:
    """Build (or find) both references of the default QM9 config; seconds each took."""
    from unite_sci.engine import load_config, make_adapter

    adapter = make_adapter(load_config("qm9", overrides=list(overrides)))
    took = {}
    for name, make in (("novelty", adapter.train_smiles), ("geometry", adapter.geometry_reference)):
        t0 = time.time()
        make()
        took[name] = round(time.time() - t0, 1)
    return took


def main(argv: list[str] | None = None) -> int:
    from unite_sci.errors import UserError

    try:
        took = build(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("QM9 evaluation references ready (" + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
