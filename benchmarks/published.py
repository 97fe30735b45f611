"""Published numbers that the benchmark reports print beside ours, one table per benchmark.

Each row maps a method to the metric keys of our own tables (percent unless said otherwise), so that a
report can put it under the same columns. Only the benchmarks read these; the adapters never do, because
a paper's number is no fact about the data. "UNITE paper" is the paper this toolkit implements
(``../shared/paper/unite.txt``).
"""
from __future__ import annotations

# QM9 (benchmarks/qm9.py); RMSD in Angstrom.
# - UNITE-S and the ADiT rows: UNITE paper, Table 3 (ADiT: Joshi et al. 2025, "All-atom Diffusion
#   Transformers"; its tokenizer's reconstruction and the QM9-only ADiT-S model).
# - EDM: Hoogeboom et al. 2022, "Equivariant Diffusion for Molecule Generation in 3D" (arXiv 2203.17003),
#   QM9 with explicit hydrogens; "Data (EDM)" is that paper's row for the training molecules themselves.
#   Validity 91.9 and unique 90.7 are also UNITE's Table 3 EDM row.
# - GeoLDM: Xu et al. 2023, "Geometric Latent Diffusion Models for 3D Molecule Generation", QM9.
QM9 = {
    "UNITE-S (paper)": {"match": 99.37, "rmsd": 0.039, "adit/validity": 94.90, "adit/uniqueness": 99.71},
    "ADiT tokenizer / ADiT-S QM9-only": {"match": 97.20, "rmsd": 0.075, "adit/validity": 96.02,
                                        "adit/uniqueness": 97.76},
    "EDM (paper)": {"edm/atom_stability": 98.7, "edm/molecule_stability": 82.0, "edm/validity": 91.9,
                    "adit/uniqueness": 90.7},
    "GeoLDM (paper)": {"edm/atom_stability": 98.9, "edm/molecule_stability": 89.4, "edm/validity": 93.8},
    "Data (EDM)": {"edm/atom_stability": 99.0, "edm/molecule_stability": 95.2, "edm/validity": 97.7},
}

# MP-20 (benchmarks/crystals.py): UNITE paper, Table 5 (appendix C.2, 10,000 generated crystals).
# ADiT rows as quoted there: the MP-20-only DiT-B model, and its tokenizer's reconstruction match rate.
MP20 = {
    "UNITE-S (paper)": {"struct_valid_pct": 99.0, "comp_valid_pct": 89.9, "valid_pct": 87.9, "match_rate_pct": 75.7},
    "ADiT MP20-only DiT-B (paper)": {"struct_valid_pct": 99.6, "comp_valid_pct": 90.5, "valid_pct": 90.1},
    "ADiT tokenizer (paper)": {"match_rate_pct": 84.5},
}

# Images (benchmarks/images.py): ImageNet 256 x 256, a different data set, resolution and model scale.
# gFID: UNITE paper, Table 1 (B 2.12, L 1.73). rFID: Table 2, which reports the B tokenizer only (1.01);
# the L row repeats that value.
IMAGES = {
    "UNITE-B (paper, ImageNet-256)": {"rfid": 1.01, "gfid": 2.12},
    "UNITE-L (paper, ImageNet-256)": {"rfid": 1.01, "gfid": 1.73},
}
