"""Tests written for the mutants that survived the metric mutation audit of issue 34 (item 7).

Each modality's verdict functions were given hand-made bugs one at a time (modalities/molecules/metrics.py and
bonds.py, modalities/crystals/metrics.py, modalities/images/domain.py and fid.py) and that modality's metric
tests run against each; the tests below kill the mutants that the existing tests let through. Each test names
the mutant it was written for; all of them are closed-form or hand-checked cases, seconds on one CPU.
"""
from __future__ import annotations

import numpy as np
import pytest

# ----------------------------------------------------------------------------------------------- crystals


def _cubic_pair(distance: float, side: float = 5.0) -> tuple:
    """Two carbon atoms ``distance`` Angstrom apart along x in a cubic cell of ``side`` Angstrom."""
    frac = np.array([[0.1, 0.1, 0.1], [0.1 + distance / side, 0.1, 0.1]])
    return np.array([6, 6]), frac, np.full(3, side), np.full(3, 90.0)


@pytest.mark.parametrize("distance, valid", [(0.3, False), (0.45, False), (0.55, True), (1.5, True)])
def test_overlap_threshold_is_half_an_angstrom(distance, valid):
    """Mutant C1 (threshold halved): the 0.3 and 0.45 A pairs would pass."""
    from unite_sci_modalities.crystals import metrics as M

    ok, reason = M.structure_validity(_cubic_pair(distance))
    assert ok is valid and reason == ("" if valid else "overlap")


@pytest.mark.parametrize("formula", ["H3S", "H2Cl"])
def test_charge_neutral_but_pauling_violating_compositions_are_invalid(formula):
    """Mutant C4 (Pauling test skipped): these are neutral under some oxidation states, but only with the more
    electronegative element as the cation, which CDVAE's Pauling test rejects."""
    from pymatgen.core import Composition

    from unite_sci_modalities.crystals import metrics as M

    z = np.concatenate([[el.Z] * int(n) for el, n in Composition(formula).items()])
    key = M.composition_key(z)
    assert M.smact_validity(*key)[0] is False
    assert M.smact_validity(*key, use_pauling_test=False)[0] is True  # the case really hinges on Pauling


def test_novelty_is_the_share_of_unique_crystals_absent_from_training():
    """Mutant C9 (novelty counts the known crystals): the existing case has one of two unique crystals in the
    training set, 50 % either way; here one of three is, so novelty is 2/3 and its complement 1/3."""
    from pathlib import Path

    from unite_sci_modalities.crystals import metrics as M
    from unite_sci_modalities.crystals.data import load_split

    here = Path(__file__).parent / "data" / "crystals" / "canonical"
    real = [s for split in ("test", "train")
            for s in load_split("mp20", split, data_dir=here, cache_dir="", progress=False).structures()]
    by_formula = {s.composition.reduced_formula: s for s, ok in zip(real, M.validity(real, progress=False).valid)
                  if ok}
    valid = list(by_formula.values())[:3]  # three valid crystals of different formulas: never matched
    assert len(valid) == 3
    r = M.evaluate_generation(valid, train=valid[:1], protocol="p", progress=False)
    assert r["p/unique_pct"] == 100.0 and r["p/novel_pct"] == pytest.approx(100 * 2 / 3)
    assert r["p/unique_novel_pct"] == pytest.approx(100 * 2 / 3)


# ---------------------------------------------------------------------------------------------------- QM9


def _embedded(smiles: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers (n,) and a seeded RDKit conformer (n, 3) Angstrom, hydrogens included."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    return (np.array([a.GetAtomicNum() for a in mol.GetAtoms()]),
            mol.GetConformer().GetPositions().astype(np.float64))


def test_a_mirror_image_reconstruction_is_no_match():
    """Mutant Q11 (the InChI comparison dropped): an enantiomer has the same bond graph, so its symmetric RMSD
    is finite, and only the InChI's stereo layer tells it apart. ADiT's protocol counts it as no match."""
    from unite_sci_modalities.molecules import metrics

    z, pos = _embedded("C[C@H](O)C#N")  # 2-hydroxypropanenitrile: one stereocentre, QM9 elements
    mirror = pos * np.array([-1.0, 1.0, 1.0])
    same = metrics.reconstruction_metrics([(z, pos)], [(z, pos)], workers=1, progress=False)
    assert same["reconstruction/match_rate"] == 100.0
    out = metrics.reconstruction_metrics([(z, pos)], [(z, mirror)], workers=1, progress=False)
    assert out["reconstruction/match_rate"] == 0.0


def test_a_duplicate_molecule_halves_both_uniqueness_metrics():
    """Mutant Q12 (canonical uniqueness counted over all canonical SMILES, always 100 %): the same molecule
    twice, the second copy with its atoms shuffled, is one unique molecule in both routes."""
    from unite_sci_modalities.molecules import metrics

    z, pos = _embedded("CCO")
    k = np.random.default_rng(0).permutation(len(z))
    out = metrics.evaluate_generation([z, z[k]], [pos, pos[k]], None, workers=1, progress=False)
    assert out["canonical/validity"] == 100.0 and out["canonical/uniqueness"] == 50.0
    assert out["adit/validity"] == 100.0 and out["adit/uniqueness"] == 50.0


# ------------------------------------------------------------------------------------------------- images


def test_a_point_on_a_manifold_boundary_counts_as_inside():
    """Mutant I2 (``d < radius``): Kynkäänniemi et al. count a ball's boundary as inside; on integer points
    the distances are exact, so ties really happen. Real points 0..4 (k = 1: radius 1 each); fake points
    5, 10, 20 (radii 5, 5, 10). The fake 5 lies on the ball of the real 4; the real 0 on the ball of the fake 5."""
    from unite_sci_modalities.images.domain import precision_recall

    real = np.arange(5, dtype=np.float64)[:, None]
    fake = np.array([[5.0], [10.0], [20.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(1 / 3) and recall == 1.0


class _FixedClassifier:
    """Features and predictions fixed in advance: the verdict of ``domain.score`` alone is under test."""

    def __init__(self, features: np.ndarray, predictions: np.ndarray):
        self.features, self.predictions = features, predictions

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.features, self.predictions

    def summary(self) -> dict:
        return {}


def test_class_agreement_counts_labelled_samples_only():
    """Mutant I8 (unlabelled samples counted as disagreeing): three labelled samples, two classified as asked,
    and three samples without a label (-1)."""
    from unite_sci_modalities.images import domain

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    labels = np.array([0, 1, 2, -1, -1, -1])
    clf = _FixedClassifier(rng.normal(size=(6, 3)), np.array([0, 1, 0, 0, 0, 0]))
    out = domain.score(images, labels, clf, rng.normal(size=(50, 3)), "x")
    assert out["images/class_agreement"] == pytest.approx(2 / 3) and out["domain_labelled_samples"] == 3
