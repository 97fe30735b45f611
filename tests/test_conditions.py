"""Structured conditions (unite_sci/conditions.py): embedding formulas, dropout for guidance, guided rows,
and the adapters' property, composition and chemical-system conditions."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unite_sci.adapter import Batch
from unite_sci.conditions import (SCALARS, Cond, ConditionEncoder, ConditionSpec, ScalarEmbedder, drop_conds,
                                  null_conds)
from unite_sci.config import build_config
from unite_sci.engine import generate
from unite_sci.errors import UserError
from unite_sci.model import RegisterLayout
from unite_sci.sampling import guided_prediction
from unite_sci.testing import TINY
from unite_sci.unite import Unite
from unite_sci_modalities.toy import ToyAdapter, ToyConfig


# ----------------------------------------------------------------------------- a toy adapter with conditions
class SizedToy(ToyAdapter):
    """The toy point clouds conditioned on their point count (a scalar) and on their class as a token set."""

    def condition_specs(self):
        return [ConditionSpec("size", "scalar"), ConditionSpec("shape", "tokens", aligned=False)]

    def build_condition_embedders(self, width):
        return {"shape": torch.nn.Embedding(2, width)}

    def collate(self, items):
        b = super().collate(items)
        size = b.mask.sum(1, keepdim=True).float()
        return Batch(b.data, b.mask, b.cond, {SCALARS: (size - 8) / 4, "shape": b.cond.view(-1, 1)})

    def draw_conditions(self, num, generator, given):
        sizes = torch.full((num,), int(given.get("size", 6)))
        shape = torch.full((num, 1), int(given.get("shape", 0)))
        return {SCALARS: (sizes.view(-1, 1).float() - 8) / 4, "shape": shape}, sizes


def _toy(extra=()):
    cfg = build_config("toy", ToyConfig, [], TINY + ["data.num_train=64", "data.num_test=16", *extra])
    adapter = SizedToy(cfg.data)
    torch.manual_seed(0)
    return adapter, cfg, Unite(adapter, cfg)


def test_scalar_embedding_follows_its_formula_and_nan_takes_the_null_vector():
    emb = ScalarEmbedder(2, 8)
    v = torch.tensor([[0.5, float("nan")]])
    e = torch.stack([0.5 * emb.weight[0] + emb.bias[0], emb.null[1]])  # (P, d)
    assert torch.allclose(emb(v), emb.mlp(e.sum(0, keepdim=True)))


def test_fourier_scalar_embedding_follows_its_formula_at_full_scale():
    torch.manual_seed(0)
    emb = ScalarEmbedder(2, 32, kind="fourier", num_freqs=8)
    v = torch.tensor([[0.5, float("nan")], [-1.0, 2.0]])
    rows = []
    for b in range(2):
        per = []
        for i in range(2):
            if torch.isnan(v[b, i]):
                per.append(emb.null[i])
                continue
            ang = 2 * math.pi * v[b, i] * emb.freqs[i]  # (F,)
            per.append(torch.cat([ang.sin(), ang.cos()]) @ emb.weight[i] + emb.bias[i])
        rows.append(torch.stack(per).sum(0))
    assert torch.allclose(emb(v), emb.mlp(torch.stack(rows)), atol=1e-5)
    assert "freqs" in dict(emb.named_buffers()) and "freqs" not in dict(emb.named_parameters())  # frozen
    # the point of it: a z-score of 1 moves the embedding as much as the Xavier scale allows, the linear
    # kind's by its 0.02 initial weight
    lin = ScalarEmbedder(1, 32)
    four = ScalarEmbedder(1, 32, kind="fourier")
    step = lambda e: (e.embed(torch.ones(1, 1)) - e.embed(torch.zeros(1, 1))).norm().item()
    assert step(four) > 20 * step(lin)
    with pytest.raises(ValueError, match="linear' or 'fourier"):
        ScalarEmbedder(1, 8, kind="sinus")


def test_dropout_drops_each_scalar_independently_and_token_sets_whole():
    g = torch.Generator().manual_seed(0)
    conds = {SCALARS: torch.zeros(4000, 2), "tok": torch.ones(4000, 3, dtype=torch.long)}
    out = drop_conds(conds, 0.3, lambda shape: torch.rand(shape, generator=g))
    dropped = torch.isnan(out[SCALARS])
    assert abs(dropped.float().mean().item() - 0.3) < 0.03
    both = (dropped[:, 0] & dropped[:, 1]).float().mean().item()
    assert abs(both - 0.09) < 0.02  # independent columns: 0.3 * 0.3, not 0.3
    tok_dropped = (out["tok"] < 0)
    assert (tok_dropped.all(1) | (~tok_dropped).all(1)).all() and abs(tok_dropped[:, 0].float().mean() - 0.3) < 0.03
    assert drop_conds(conds, 0.0, None) is conds


def test_guided_rows_double_with_every_condition_null():
    c = Cond(torch.tensor([1, 0]), {SCALARS: torch.tensor([[0.3], [0.4]]), "tok": torch.tensor([[2, -1], [1, 3]])})
    seen = {}

    def predict(x, t, cond):
        seen["cond"] = cond
        return x * (1 + cond.label.view(-1, 1).float())

    x = torch.ones(2, 1)
    out = guided_prediction(predict, x, torch.tensor([0.5, 0.5]), cond=c, null=2, scale=3.0, interval=(0.0, 1.0))
    both = seen["cond"]
    assert both.label.tolist() == [1, 0, 2, 2]
    assert torch.isnan(both.extra[SCALARS][2:]).all() and (both.extra["tok"][2:] == -1).all()
    assert torch.equal(both.extra[SCALARS][:2], c.extra[SCALARS])
    xc, xu = x * torch.tensor([[2.0], [1.0]]), x * 3.0
    assert torch.allclose(out, xu + 3.0 * (xc - xu))


def test_conditions_change_the_denoiser_and_absent_ones_count_as_null():
    adapter, cfg, model = _toy()
    model.eval()
    b = adapter.collate([adapter.build_splits()["train"][i] for i in range(4)])
    regs = model.registers(b.mask, 4, torch.device("cpu"))
    x, t = torch.randn(4, regs.mask.shape[1], cfg.model.latent_dim), torch.full((4,), 0.5)
    with torch.no_grad():
        for p in model.encoder.conditions.parameters():  # make the condition paths matter at init
            p.add_(torch.randn_like(p) * 0.5)
        for blk in model.encoder.blocks:
            torch.nn.init.normal_(blk.ada[-1].weight, std=0.1)
        base = model.denoiser.denoise(x, t, b.cond, regs, conds=b.conds)
        other = dict(b.conds, **{SCALARS: b.conds[SCALARS] + 1.0})
        assert not torch.allclose(base, model.denoiser.denoise(x, t, b.cond, regs, conds=other))
        none = model.denoiser.denoise(x, t, b.cond, regs, conds=None)
        assert torch.allclose(none, model.denoiser.denoise(x, t, b.cond, regs, conds=null_conds(b.conds)), atol=1e-6)


def test_a_training_step_drops_conditions_and_sampling_takes_given_ones():
    adapter, cfg, model = _toy(["flow.label_dropout=0.5"])
    seen = []
    orig = model.denoiser.denoise

    def spy(*a, **k):
        seen.append(k.get("conds"))
        return orig(*a, **k)

    model.denoiser.denoise = spy
    b = adapter.collate([adapter.build_splits()["train"][i] for i in range(32)])
    loss, _ = model.train()(b)
    loss.backward()
    assert torch.isfinite(loss) and torch.isnan(seen[-1][SCALARS]).any() and not torch.isnan(seen[-1][SCALARS]).all()
    samples, _ = generate(model.eval(), adapter, cfg.sample, 3, progress=False, given={"size": 5})
    assert [len(s) for s in samples] == [5, 5, 5]


# ----------------------------------------------------------------------------- QM9 properties
def test_qm9_property_conditions_normalise_draw_and_refuse_bad_values():
    from unite_sci.engine import load_config, make_adapter
    from unite_sci_modalities.qm9.conditioning import train_half

    a = make_adapter(load_config("qm9", overrides=["data.condition_on=[gap]", "data.num_train=400",
                                                   "data.num_val=20", "data.num_test=20"]))
    train = a.build_splits()["train"]
    b = a.collate([train[i] for i in range(len(train))])
    col = b.conds[SCALARS][:, 0]
    assert abs(col.mean().item()) < 1e-4 and abs(col.std(unbiased=False).item() - 1) < 1e-3
    conds, sizes = a.draw_conditions(5, torch.Generator().manual_seed(0), {"gap": 7000.0})
    want = (7000.0 - a.properties.mean[0]) / a.properties.std[0]
    assert np.allclose(conds[SCALARS][:, 0].numpy(), want, atol=1e-4)
    assert set(sizes.tolist()) <= set(train.mols.n_atoms.tolist())
    gap = a.properties.raw(train.mols)[:, 0]  # meV, straight from the property table
    lo, hi = gap.min(), gap.max()
    for bad, msg in [({"homo": 1}, "unknown condition"), ({"gap": "x"}, "must be a number"),
                     ({"gap": "nan"}, "outside the range"), ({"gap": "inf"}, "outside the range"),
                     ({"gap": -1e9}, f"outside the range this model was trained on: {lo:.6g} to {hi:.6g} meV"),
                     ({"gap": hi + 0.11 * (hi - lo)}, "outside the range")]:
        with pytest.raises(UserError, match=msg):
            a.draw_conditions(2, torch.Generator(), bad)
    a.draw_conditions(2, torch.Generator(), {"gap": hi + 0.09 * (hi - lo)})  # within the 10 % margin
    full = a.molecules("train")
    ha, hb = train_half(full, "a"), train_half(full, "b")
    assert not set(ha.index) & set(hb.index) and len(ha) + len(hb) == len(full)


def test_evaluate_of_gap_conditioned_samples_predicts_their_gap(tmp_path):
    """EDM's check of what was asked: the half-A predictor's gap of each readable sample, its MAE to the
    requested value; a molecule with chlorine cannot be read by the QM9 predictor and is not counted."""
    from unite_sci.engine import load_config, make_adapter
    from unite_sci_modalities.qm9.conditioning import condition_metrics, train_half
    from unite_sci_modalities.qm9.predictor import load_or_train
    from unite_sci_modalities.qm9.properties import load_properties, lookup

    a = make_adapter(load_config("qm9", overrides=["data.num_train=300", "data.num_val=10", "data.num_test=20"]))
    test = a.molecules("test")
    samples = [(test.z[i], test.pos[i]) for i in range(len(test))]
    chlorine = (np.array([17, 6, 1, 1, 1]), np.random.RandomState(0).randn(5, 3))
    got = condition_metrics(a, samples + [chlorine], {"gap": "7000", "chemsys": "C-H"}, str(tmp_path))
    half = train_half(a.molecules("train"), "a")
    pred, _ = load_or_train("gap", half.z, half.pos, lookup(load_properties(a.cfg.data_dir, a.cfg.cache_dir), "gap",
                                                              half.index), tmp_path)  # the cached one
    want = pred.predict([z for z, _ in samples], [p for _, p in samples])
    assert got["gap/predicted_count"] == len(samples) and got["gap/unit"] == "meV"
    assert got["gap/mae_to_requested"] == pytest.approx(np.abs(want - 7000.0).mean(), rel=1e-5)
    assert got["gap/predicted_mean"] == pytest.approx(want.mean(), rel=1e-5)
    assert not any(k.startswith("chemsys") for k in got)
    assert condition_metrics(a, samples, {"chemsys": "C-H"}, str(tmp_path)) == {}


def test_property_predictor_features_are_invariant_and_it_learns():
    from unite_sci_modalities.qm9 import data as qd
    from unite_sci_modalities.qm9.predictor import Predictor, feature_matrix, features
    from unite_sci_modalities.atoms import random_rotations

    mols = qd.load_split("train").subset(np.arange(600))
    z, p = mols.z[5], mols.pos[5]
    perm = np.random.RandomState(0).permutation(len(z))
    rot = random_rotations(1)[0].numpy().astype(np.float64)
    assert np.allclose(features(z, p), features(z[perm], p[perm] @ rot.T + 1.5), atol=1e-4)
    x = feature_matrix(mols.z, mols.pos)
    y = np.array([len(zz) for zz in mols.z], dtype=np.float64) * 2.0  # a property the features determine
    pred, info = Predictor.train(x[:500], y[:500], epochs=40)
    assert np.abs(pred.predict_features(x[500:]) - y[500:]).mean() < 0.3 * np.abs(y[500:] - y.mean()).mean()


# ----------------------------------------------------------------------------- crystals
FIXTURE = Path(__file__).parent / "data" / "crystals" / "offline"  # a few real MP-20 rows, offline layout
MP20_FIXTURE = [f"data.offline_root={FIXTURE}", "data.holdout_fraction=0.25", "data.cache_dir=",
                "data.load_workers=1", "data.eval_workers=1"]

@pytest.fixture(scope="module")
def crystal_model():
    from unite_sci.engine import load_config, make_adapter

    cfg = load_config("mp20", overrides=TINY + MP20_FIXTURE + ["data.condition_on=[composition,chemsys]",
                                                                "sample.steps=2"])
    adapter = make_adapter(cfg)
    torch.manual_seed(0)
    return adapter, cfg, Unite(adapter, cfg).eval()


def test_a_composition_condition_fixes_the_composition(crystal_model):
    adapter, cfg, model = crystal_model
    samples, _ = generate(model, adapter, cfg.sample, 4, progress=False, given={"composition": "Li2Fe2O4"})
    assert all(sorted(s.z.tolist()) == [3, 3, 8, 8, 8, 8, 26, 26] for s in samples)
    train = adapter.build_splits()["train"]
    b = adapter.collate([train[i] for i in range(4)])
    assert torch.equal(b.conds["composition"][b.mask], b.data["types"][b.mask])
    assert ((b.conds["chemsys"] >= 0).sum(1) == torch.tensor([len(set(train[i].z.tolist())) for i in range(4)])).all()
    loss, _ = Unite(adapter, cfg).train()(b)
    assert torch.isfinite(loss)


def test_crystal_conditions_refuse_bad_input(crystal_model):
    adapter = crystal_model[0]
    g = torch.Generator()
    for given, msg in [({"composition": "Xx2O3"}, "^composition 'Xx2O3': 'Xx' is not a chemical element$"),
                       ({"chemsys": "Li-Qq"}, "^chemsys 'Li-Qq': 'Qq' is not a chemical element$"),
                       ({"composition": "Li0.5O"}, "whole numbers"), ({"composition": "Li30O30"}, "atoms"),
                       ({"composition": "LiO", "chemsys": "Li-O"}, "not both"), ({"spacegroup": 1}, "unknown")]:
        with pytest.raises(UserError, match=msg):
            adapter.draw_conditions(2, g, given)
    conds, sizes = adapter.draw_conditions(3, g, {"chemsys": "Li-Fe-O"})
    assert (conds["composition"] == -1).all() and conds["chemsys"].tolist() == [[2, 7, 25]] * 3


def test_the_atom_count_condition_states_the_count_and_fixes_it_when_given():
    from unite_sci.engine import load_config, make_adapter

    from unite_sci_modalities.crystals.conditioning import CrystalConditions

    c = CrystalConditions(["num_atoms"], 20)
    assert c.count_value(torch.tensor([10, 15, 1])).squeeze(1).tolist() == pytest.approx([0.0, 1.0, -1.8])  # (n-10)/5
    cfg = load_config("mp20", overrides=TINY + MP20_FIXTURE + ["data.condition_on=[num_atoms]", "sample.steps=2"])
    adapter = make_adapter(cfg)
    train = adapter.build_splits()["train"]
    b = adapter.collate([train[i] for i in range(4)])
    assert torch.allclose(b.conds[SCALARS][:, 0], (b.mask.sum(1).float() - 10) / 5) and "composition" not in b.conds
    conds, sizes = adapter.draw_conditions(3, torch.Generator().manual_seed(0), {"num_atoms": "7"})
    assert sizes.tolist() == [7] * 3 and torch.allclose(conds[SCALARS], torch.full((3, 1), -0.6))
    conds, sizes = adapter.draw_conditions(50, torch.Generator().manual_seed(0), {})  # not given: the drawn count
    assert set(sizes.tolist()) <= set(train.num_atoms.tolist()) and torch.allclose(conds[SCALARS][:, 0],
                                                                                   (sizes.float() - 10) / 5)
    model = Unite(adapter, cfg)
    assert model.encoder.conditions.scalar_names == ["num_atoms"]
    assert torch.isfinite(model.train()(b)[0])
    for given, msg in [({"num_atoms": "21"}, "1 to 20 atoms"), ({"num_atoms": "x"}, "not a number"),
                       ({"num_atoms": 2.5}, "1 to 20")]:
        with pytest.raises(UserError, match=msg):
            adapter.draw_conditions(2, torch.Generator(), given)


def test_a_layout_without_elements_puts_condition_tokens_at_one_position():
    from unite_sci.model import GenerativeEncoder

    enc = ConditionEncoder([ConditionSpec("tok", "tokens")], 16, {"tok": torch.nn.Embedding(4, 16)})
    ge = GenerativeEncoder(RegisterLayout(False, 4), 3, width=16, depth=1, heads=2, conditions=enc)
    regs = ge.layout.registers(None, 2, torch.device("cpu"))
    out = ge.denoise(torch.randn(2, 4, 3), torch.rand(2), torch.zeros(2, dtype=torch.long), regs,
                     conds={"tok": torch.tensor([[1, 2], [3, -1]])})
    assert out.shape == (2, 4, 3) and torch.isfinite(out).all()


def test_condition_token_tables_start_as_small_as_the_label_table():
    """An adapter's nn.Embedding (N(0, 1) rows by default) made c ~10x too large: a crystal model with a
    composition condition never left the collapsed-latent phase (flow loss 0, type CE 3.6 after 2,000 steps)."""
    enc = ConditionEncoder([ConditionSpec("tok", "tokens")], 64, {"tok": torch.nn.Embedding(100, 64)})
    from unite_sci.model import GenerativeEncoder

    ge = GenerativeEncoder(RegisterLayout(True, 8), 4, width=64, depth=1, heads=2, conditions=enc)
    w = ge.conditions.tokens["tok"].embed.weight
    assert abs(w.std().item() - 0.02) < 0.005



def test_a_scalar_condition_must_be_finite_and_near_the_training_range():
    from unite_sci.conditions import RANGE_MARGIN, scalar_value

    assert scalar_value("t", "2.5", (0.0, 10.0)) == 2.5
    assert scalar_value("t", 10 + RANGE_MARGIN * 10, (0.0, 10.0), "K") == 11.0  # the edge of the margin
    for bad in ("nan", float("inf"), "-inf", -1.0001, 11.001, -1e9):
        with pytest.raises(UserError, match=r"^t=\S+ is outside the range this model was trained on: 0 to 10 K"):
            scalar_value("t", bad, (0.0, 10.0), "K")
    with pytest.raises(UserError, match="^t must be a number \\(K\\), got 'x'$"):
        scalar_value("t", "x", (0.0, 10.0), "K")


def test_a_batch_without_labels_is_refused_in_one_line(tmp_path, monkeypatch):
    from test_trainer import make_trainer

    with pytest.raises(UserError, match=r"^the adapter's batch has cond=NoneType, not a \(B,\) long tensor"):
        Batch({"x": torch.zeros(2, 3)}, None, None)
    plain = ToyAdapter.collate
    monkeypatch.setattr(ToyAdapter, "collate", lambda self, items: Batch(plain(self, items).data, None, None))
    with pytest.raises(UserError, match="adapter.null_cond"):  # in training too, before any .to(device)
        make_trainer(tmp_path, "train.max_steps=1").fit()


def test_qm9_evaluate_reports_the_requested_property_through_the_adapter(tmp_path):
    """`evaluate` calls the adapter's condition_metrics with what `sample` recorded: QM9's is the predictor check."""
    from unite_sci.engine import load_config, make_adapter

    a = make_adapter(load_config("qm9", overrides=["data.num_train=300", "data.num_val=10", "data.num_test=10",
                                                   f"data.cache_dir={tmp_path}"]))
    test = a.molecules("test")
    got = a.condition_metrics([(test.z[i], test.pos[i]) for i in range(len(test))], {"gap": 6500})
    assert got["gap/requested"] == 6500.0 and got["gap/predicted_count"] == len(test)
