"""The joint QM9 + MP-20 model (modalities/joint.py) and the generic parts it needs: per-sample extra
registers, routing by data set, guidance on the data-set label, checkpoint round trip."""
from pathlib import Path

import numpy as np
import pytest
import torch

from unite_sci.adapter import Batch
from unite_sci.conditions import ConditionSpec
from unite_sci.config import build_config
from unite_sci.engine import generate, load_config, load_model, make_adapter, train
from unite_sci.errors import UserError
from unite_sci.model import RegisterLayout
from unite_sci.testing import TINY
from unite_sci.unite import Unite
from unite_sci_modalities.crystals.data import CrystalItem
from unite_sci_modalities.toy import ToyAdapter, ToyConfig

FIXTURE = Path(__file__).parent / "data" / "crystals" / "offline"  # a few real MP-20 rows, offline layout
SMALL = ["data.qm9.num_train=64", "data.qm9.num_val=8", "data.qm9.num_test=8", f"data.mp20.offline_root={FIXTURE}",
         "data.mp20.holdout_fraction=0.25", "data.mp20.cache_dir=", "data.mp20.load_workers=1",
         "data.mp20.eval_workers=1", "sample.steps=2", "train.sample_every=0"]


def test_extra_registers_can_be_switched_off_per_sample():
    layout = RegisterLayout(True, 5, extra=1)
    elem = torch.tensor([[True, True, False], [True, True, True]])
    regs = layout.registers(elem, 2, torch.device("cpu"), torch.tensor([[False], [True]]))
    assert regs.mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert regs.pos.tolist() == [[0, 1, 2, 5]] * 2
    assert layout.registers(elem, 2, torch.device("cpu")).mask[:, -1].all()


class CellToy(ToyAdapter):
    """Toy clouds with one extra register that only class-1 clouds (squares) have: the generic capability
    a composite of data sets needs, on the toy adapter."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.layout = RegisterLayout(True, cfg.max_points, extra=1)

    def condition_specs(self):
        return [ConditionSpec("kind", "tokens", aligned=False)]

    def build_condition_embedders(self, width):
        return {"kind": torch.nn.Embedding(2, width)}

    def collate(self, items):
        b = super().collate(items)
        return Batch(b.data, b.mask, b.cond, {"kind": b.cond.view(-1, 1)})

    def register_mask(self, conds):
        return None if "kind" not in conds else conds["kind"][:, :1] == 1

    def build_heads(self, width):
        inner = super().build_heads(width)
        return _DropLast(inner)


class _DropLast(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, h, mask):
        return self.inner(h[:, :-1], mask)


def test_a_masked_extra_register_changes_nothing_for_the_samples_without_it():
    cfg = build_config("toy", ToyConfig, [], TINY + ["data.num_train=32", "data.num_test=8"])
    adapter = CellToy(cfg.data)
    torch.manual_seed(0)
    model = Unite(adapter, cfg).eval()
    with torch.no_grad():  # open the adaLN-Zero branches, so that attention matters at all
        for blk in model.encoder.blocks:
            torch.nn.init.normal_(blk.ada[-1].weight, std=0.1)
    b = adapter.collate([adapter.build_splits()["train"][i] for i in range(4)])  # labels 0, 1, 0, 1
    regs = model.registers(b.mask, 4, torch.device("cpu"), b.conds)
    assert regs.mask[:, -1].tolist() == [False, True, False, True]
    x = torch.randn(4, regs.mask.shape[1], cfg.model.latent_dim)
    t = torch.full((4,), 0.3)
    with torch.no_grad():
        a = model.denoiser.denoise(x, t, b.cond, regs, conds=b.conds)
        x2 = x.clone()
        x2[:, -1] += 5.0
        c = model.denoiser.denoise(x2, t, b.cond, regs, conds=b.conds)
        out = model.decode(a, b.mask, regs)
    m = regs.mask[:, :-1]
    a, c = a[:, :-1], c[:, :-1]  # the element registers
    assert torch.allclose(a[0][m[0]], c[0][m[0]], atol=1e-5) and not torch.allclose(a[1][m[1]], c[1][m[1]])
    assert out["register_mask"][:, -1].tolist() == [False, True, False, True]
    loss, _ = model.train()(b)
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def joint():
    cfg = load_config("qm9+mp20", overrides=TINY + SMALL)
    adapter = make_adapter(cfg)
    torch.manual_seed(0)
    return adapter, cfg, Unite(adapter, cfg)


def test_mixed_batches_keep_item_order_and_share_atomic_numbers(joint):
    adapter = joint[0]
    train = adapter.build_splits()["train"]
    n0 = train.n0
    items = [train[0], train[n0], train[1], train[n0 + 1]]
    b = adapter.collate(items)
    assert b.data["dataset"].tolist() == [0, 1, 0, 1] and b.conds["dataset"].view(-1).tolist() == [0, 1, 0, 1]
    back = adapter.batch_to_domain(b)
    assert isinstance(back[1], CrystalItem) and isinstance(back[3], CrystalItem)
    mol = items[0][1]
    assert np.array_equal(back[0][0], mol.z.numpy()) and np.allclose(back[0][1], mol.pos.numpy(), atol=1e-5)
    cry = items[1][1]
    assert np.array_equal(back[1].z, cry.z) and np.allclose(back[1].lengths, cry.lengths, rtol=1e-4)
    # one element table: carbon is the same type id in both data sets
    c_mol = b.data["types"][0][b.mask[0]][torch.from_numpy(mol.z.numpy() == 6)]
    assert (c_mol == 5).all()
    share = np.mean([train[i][0] == 0 for i in range(len(train))])
    assert abs(share - adapter.cfg.qm9_share) < 0.02


def test_each_sample_is_judged_by_its_own_loss(joint):
    adapter, cfg, model = joint
    train = adapter.build_splits()["train"]
    mols = adapter.collate([train[i] for i in range(3)])
    out = model.decode(torch.randn(3, mols.mask.shape[1] + 1, cfg.model.latent_dim), mols.mask)
    base, _ = adapter.reconstruction_loss(out, mols)
    other = dict(out, sincos=out["sincos"] + 1.0, lattice=out["lattice"] + 1.0)  # crystal outputs only
    assert torch.allclose(base, adapter.reconstruction_loss(other, mols)[0])
    assert not torch.allclose(base, adapter.reconstruction_loss(dict(out, pos=out["pos"] + 1.0), mols)[0])


def test_dataset_condition_routes_sampling_and_guidance_training_drops_it(joint):
    adapter, cfg, model = joint
    model.eval()
    crystals, _ = generate(model, adapter, cfg.sample, 3, progress=False, given={"dataset": "mp20"})
    molecules, _ = generate(model, adapter, cfg.sample, 3, progress=False, given={"dataset": "qm9"})
    assert all(isinstance(c, CrystalItem) for c in crystals) and all(isinstance(m, tuple) for m in molecules)
    assert all(set(m[0].tolist()) <= {1, 6, 7, 8, 9} for m in molecules)
    with pytest.raises(UserError, match="dataset must be one of"):
        adapter.draw_conditions(2, torch.Generator(), {"dataset": "oqmd"})
    cfg2 = load_config("qm9+mp20", overrides=TINY + SMALL + ["flow.label_dropout=1.0"])
    m2 = Unite(adapter, cfg2).train()
    seen = []
    orig = m2.denoiser.denoise
    m2.denoiser.denoise = lambda *a, **k: seen.append((a[3], k["conds"])) or orig(*a, **k)
    train = adapter.build_splits()["train"]
    b = adapter.collate([train[0], train[train.n0]])
    loss, _ = m2(b)
    regs, conds = seen[-1]
    assert torch.isfinite(loss) and (conds["dataset"] == -1).all()  # dropped for the denoiser ...
    assert regs.mask[:, -1].tolist() == [False, True]  # ... while the registers follow the real data set


def test_a_joint_checkpoint_round_trips(tmp_path):
    cfg = load_config("qm9+mp20", overrides=TINY + SMALL + [f"out={tmp_path}", "train.max_steps=3",
                                                            "train.budget_minutes=0", "train.progress=false"])
    ckpt = train(cfg)["checkpoint"]
    loaded = load_model(ckpt)
    assert loaded.adapter.parts[1].lattice_mean.abs().sum() > 0  # the crystal statistics came back
    samples, _ = generate(loaded.model, loaded.adapter, loaded.cfg.sample, 4, progress=False, given={"dataset": "mp20"})
    assert len(samples) == 4 and all(isinstance(s, CrystalItem) for s in samples)
