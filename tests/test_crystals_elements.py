"""Chemistry-aware element features (``data.element_features``, issue #11): the table, the embedder and
type-head paths, and the MP-20 study's columns."""
import numpy as np
import torch

from unite_sci.testing import AdapterConformance
from unite_sci.unite import Unite
from unite_sci_modalities.crystals.elements import NUM_FEATURES, OXIDATION_RANGE, ElementFeatures, element_table

from test_crystals_adapter import MP20_OFFLINE, make


def _ox(row: np.ndarray) -> set[int]:
    return {ox for ox, v in zip(OXIDATION_RANGE, row[31:]) if v}


def test_table_rows_carry_period_group_block_electronegativity_and_oxidation_states():
    t = element_table()
    assert t.shape == (100, NUM_FEATURES) and t.dtype == np.float32
    na, k, cl, fe = t[10], t[18], t[16], t[25]
    assert na[2] == 1 and k[3] == 1  # periods 3 and 4
    assert na[7] == 1 and k[7] == 1 and cl[7 + 16] == 1  # groups 1, 1, 17
    assert na[25] == 1 and cl[26] == 1 and fe[27] == 1  # blocks s, p, d
    assert abs(cl[29] - 3.16 / 4) < 1e-6 and cl[30] == 0
    assert _ox(na) == {1} and -1 in _ox(cl) and {2, 3} <= _ox(fe)  # pymatgen: Cl -1, 1, 3, 5, 7
    # neighbours are closer than strangers
    assert np.linalg.norm(na - k) < np.linalg.norm(na - cl)


def test_element_features_module_embeds_padding_as_zero_and_scores_every_element():
    torch.manual_seed(0)
    emb, head = ElementFeatures(16, padded=True), ElementFeatures(16, padded=False)
    types = torch.tensor([[10, 16, 100]])  # Na, Cl, padding
    e = emb.embed(types)
    assert e.shape == (1, 3, 16) and torch.equal(e[0, 2], torch.zeros(16))
    assert head.score(torch.randn(2, 5, 16)).shape == (2, 5, 100)


def test_the_adapter_trains_with_element_features():
    a, cfg, batch = make("data.element_features=true")
    model = Unite(a, cfg)
    assert model.embedder.chem is not None and model.heads.chem is not None
    loss, logs = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.heads.chem.proj.weight.grad.abs().sum() > 0
    _, cfg0, _ = make()
    plain = sum(p.numel() for p in Unite(a.__class__(cfg0.data), cfg0).parameters())
    extra = NUM_FEATURES * (cfg.model.width + cfg.model.dec_width)  # two projections, no bias
    assert sum(p.numel() for p in model.parameters()) == plain + extra


class TestMP20ElementFeaturesConformance(AdapterConformance):
    modality = "mp20"
    data_overrides = MP20_OFFLINE + ["data.element_features=true"]
    perfect_reconstruction = {"MP-20 offline/match_rate_pct": 100.0, "MP-20 offline/rmse": 0.0}


def test_study_columns_find_protocol_prefixed_metrics():
    from unite_sci_benchmarks.study import METRICS, _row, metrics_for

    res = {"generation": {"MP-20 offline/valid_pct": 80.0, "MP-20 offline/comp_valid_pct": 82.0,
                          "MP-20 offline/struct_valid_pct": 99.0, "MP-20 offline/unique_pct": 99.5,
                          "MP-20 offline/elements_per_crystal": 3.1},
           "reconstruction": {"MP-20 offline/match_rate_pct": 88.0, "MP-20 offline/match_rate_ungated_pct": 97.0,
                              "MP-20 offline/rmse": 0.02},
           "train_steps": 1234}
    row = _row(res, METRICS["mp20"])
    assert row == {"valid": 80.0, "comp_valid": 82.0, "struct_valid": 99.0, "unique": 99.5,
                   "elements_per_crystal": 3.1, "match": 88.0, "match_ungated": 97.0, "rmse": 0.02, "train_steps": 1234}
    toy = metrics_for("toy", {"generation": {"validity": 50.0, "note": "x"}})
    assert toy == {"validity": ("generation", "validity"), "train_steps": ("", "train_steps")}


def test_cell_vote_drops_a_stray_element_and_keeps_a_real_singleton():
    a, _, _ = make("data.type_decode=cell_vote")
    logits = torch.full((1, 5, 100), -20.0)
    logits[0, :3, 10] = 5.0            # three confident Na
    logits[0, 3, 16] = 5.0             # one confident Cl: a real singleton, kept
    logits[0, 4, 18] = 0.3             # one atom barely prefers K (about 0.4 of an atom in all) ...
    logits[0, 4, 10] = 0.0             # ... over Na: K is dropped, the atom becomes Na
    logits[0, 4, 16] = -0.2
    mask = torch.ones(1, 5, dtype=torch.bool)
    z = a.decode_types({"type_logits": logits}, mask)
    assert z.tolist() == [[11, 11, 11, 17, 11]]
    a_arg, _, _ = make()
    assert a_arg.decode_types({"type_logits": logits}, mask).tolist() == [[11, 11, 11, 17, 19]]
    padded = torch.tensor([[True, True, True, True, False]])  # padding never votes
    logits[0, 4] = -20.0
    logits[0, 4, 18] = 20.0
    assert a.decode_types({"type_logits": logits}, padded)[0, :4].tolist() == [11, 11, 11, 17]
