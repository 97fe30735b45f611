"""Where compositions fail (modalities/crystals/composition_errors.py): the causes and the tables."""
from __future__ import annotations

import numpy as np
import pytest

from unite_sci_modalities.crystals.composition_errors import by_group, classify, table

NA, MG, CL, O, K = 11, 12, 17, 8, 19


def _crystal(*z: int) -> tuple:
    n = len(z)
    frac = (np.arange(n)[:, None] * np.array([0.37, 0.21, 0.13])) % 1.0  # far apart in a 6 A cube
    return np.array(z), frac, np.full(3, 6.0), np.full(3, 90.0)


def test_each_invalid_composition_gets_the_first_cause_that_applies():
    train = [_crystal(NA, CL), _crystal(NA, O, O), _crystal(CL, O), _crystal(MG, O)]
    samples = [_crystal(NA, CL), _crystal(K, CL), _crystal(NA, CL, O), _crystal(MG, MG, O), _crystal(MG, CL)]
    valid = np.array([True, False, False, False, False])
    assert classify(samples, train, valid) == ["", "unseen_pair", "unseen_set", "stoichiometry", "unseen_pair"]


def test_groups_give_the_share_and_the_valid_share_inside():
    res = by_group([1, 2, 2, 3], np.array([True, True, False, False]), [("1-2", {1, 2}), ("5", {5})])
    assert res["1-2"] == pytest.approx((75.0, 100 * 2 / 3)) and res["5"][0] == 0.0 and np.isnan(res["5"][1])


def test_table_scores_samples_and_reference_by_smact_and_splits_odd_and_even_counts():
    train = [_crystal(NA, CL), _crystal(MG, O)]
    samples = [_crystal(NA, CL), _crystal(NA, NA, CL), _crystal(MG, O), _crystal(NA, CL, CL)]  # 2 of 4 balance
    text = table(samples, [_crystal(NA, CL), _crystal(MG, O)], train, workers=1)
    assert "| stoichiometry | 50.0 | 0.0 |" in text and "| compositionally valid | 50.0 | 100.0 |" in text
    assert "| odd | 50.0 / 0.0 | 0.0 / nan |" in text and "| even | 50.0 / 100.0 | 100.0 / 100.0 |" in text
