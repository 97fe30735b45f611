"""Fine-tuning (issue #35, unite_sci/finetune.py): ``train --init-from`` a shipped model by name or a checkpoint,
the parent's architecture and weights, new element rows, a new condition that leaves the model equal to its
parent at step 0, the one-line conflict error and the parent's record in config, checkpoint and card."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from unite_sci import shipped as sh
from unite_sci.adapter import Batch
from unite_sci.checkpoint import load_checkpoint
from unite_sci.cli import main
from unite_sci.conditions import SCALARS, ConditionSpec
from unite_sci.engine import load_config, make_adapter
from unite_sci.errors import UserError
from unite_sci.files import file_hash
from unite_sci.finetune import child_config, inherit_weights, load_parent
from unite_sci.testing import TINY
from unite_sci.unite import Unite
from unite_sci_modalities.qm9.adapter import QM9Adapter, QM9Config
from unite_sci_modalities.toy import ToyAdapter

FIXTURE = Path(__file__).parent / "data" / "shipped"  # toy-test: a 20-step toy model, depth 2, width 32
SDF = Path(__file__).parent / "data" / "molecules" / "example.sdf"  # 50 MOSES molecules with S, Cl, Br
QUIET = ["train.threads=1", "train.progress=false", "train.tensorboard=false"]


@pytest.fixture(autouse=True)
def fixture_models(monkeypatch):
    monkeypatch.setenv(sh.MODELS_ENV, str(FIXTURE))


def toy_train(out: Path, *words: str) -> int:
    return main(["train", "--modality", "toy", "--max-steps", "2", "--out", str(out), "data.num_train=64",
                 "data.num_test=16", "train.batch_size=8", *QUIET, *words])


class ScalarToy(ToyAdapter):
    """The toy point clouds conditioned on their point count: a scalar the parent never saw."""

    def condition_specs(self):
        return [ConditionSpec("size", "scalar")]

    def collate(self, items):
        b = super().collate(items)
        return Batch(b.data, b.mask, b.cond, {SCALARS: (b.mask.sum(1, keepdim=True).float() - 8) / 4})


def test_init_from_a_shipped_name_takes_its_architecture_and_weights():
    parent = load_parent("toy-test")
    cfg = child_config(load_config("toy", overrides=["model.preset=tiny"]), parent, given={"preset"})
    assert cfg.model.width == 32 and cfg.model.depth == 2  # the parent's, not the preset's
    assert (cfg.init_from.source, cfg.init_from.steps) == ("toy-test", 20)
    assert cfg.init_from.sha256 == sh.read_card(FIXTURE / "toy-test.pt")["weights"]["sha256"]
    adapter = make_adapter(cfg)
    model = Unite(adapter, cfg)
    done = inherit_weights(model, adapter, parent)
    assert not done.new and not done.grown
    assert all(torch.equal(v, parent.weights[k]) for k, v in model.state_dict().items())


def test_init_from_a_checkpoint_records_the_parent_in_config_checkpoint_and_card(tmp_path, capsys):
    assert toy_train(tmp_path / "parent", *TINY) == 0
    ckpt = tmp_path / "parent" / "checkpoints" / "last.pt"
    assert toy_train(tmp_path / "child", "--init-from", str(ckpt)) == 0
    assert "init-from" in capsys.readouterr().err
    want = {"source": str(ckpt), "sha256": file_hash(ckpt), "steps": 2, "modality": "toy"}
    assert yaml.safe_load((tmp_path / "child" / "config.yaml").read_text())["init_from"] == want
    child = load_checkpoint(tmp_path / "child" / "checkpoints" / "last.pt")
    assert yaml.safe_load(child["config"])["init_from"] == want
    assert yaml.safe_load(child["config"])["model"]["width"] == 64  # TINY's, from the parent
    assert main(["ship", "--checkpoint", str(tmp_path / "child" / "checkpoints" / "last.pt"), "--name", "kid",
                 "--out", str(tmp_path / "models")]) == 0
    assert yaml.safe_load((tmp_path / "models" / "kid.card.yaml").read_text())["parent"] == want
    assert f"fine-tuned from {ckpt}" in capsys.readouterr().out
    assert "parent" not in yaml.safe_load((FIXTURE / "toy-test.card.yaml").read_text())  # from scratch: none


def test_a_model_key_that_contradicts_the_parent_is_one_line_naming_it(tmp_path, capsys):
    assert toy_train(tmp_path / "child", "--init-from", "toy-test", "model.depth=3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.depth=3" in err and "model.depth=2" in err
    assert toy_train(tmp_path / "same", "--init-from", "toy-test", "model.depth=2") == 0  # agreeing is fine


@pytest.mark.parametrize("kind", ["linear", "fourier"])
def test_a_new_scalar_condition_leaves_the_model_equal_to_its_parent_at_step_0(kind):
    parent = load_parent("toy-test")
    words = ["data.num_train=64", "data.num_test=16", f"model.scalar_embedding={kind}"]
    cfg = child_config(load_config("toy", overrides=words), parent, given={"scalar_embedding"})
    assert cfg.model.scalar_embedding.value == kind  # the parent has no scalar condition: the child chooses
    torch.manual_seed(1)
    plain, cond = Unite(ToyAdapter(cfg.data), cfg).eval(), Unite(ScalarToy(cfg.data), cfg).eval()
    done = inherit_weights(cond, cond.adapter, parent)
    inherit_weights(plain, plain.adapter, parent)
    assert done.new and all(".conditions." in n for n in done.new)
    batch = cond.adapter.collate([cond.adapter.build_splits()["train"][i] for i in range(6)])
    g = torch.Generator().manual_seed(0)
    regs = cond.registers(batch.mask, 6, torch.device("cpu"))
    x_t = torch.randn(6, regs.mask.shape[1], cfg.model.latent_dim, generator=g)
    t = torch.rand(6, generator=g)
    with torch.no_grad():
        want = plain.denoiser.denoise(x_t, t, batch.cond, regs)
        for conds in (batch.conds, {SCALARS: torch.full((6, 1), float("nan"))}):  # given, and dropped
            assert torch.equal(cond.denoiser.denoise(x_t, t, batch.cond, regs, conds=conds), want)
    # and the condition can still learn: its output projection gets a gradient
    cond.train()
    cond.denoiser.denoise(x_t, t, batch.cond, regs, conds=batch.conds).square().sum().backward()
    assert cond.denoiser.conditions.scalars.mlp[-1].weight.grad.abs().sum() > 0


def test_a_parent_with_a_scalar_condition_keeps_its_scalar_embedding():
    parent = load_parent("toy-test")  # older than the key: its scalar embedder (added here) was linear
    parent = replace(parent, weights={**parent.weights, "denoiser.conditions.scalars.weight": torch.zeros(1, 8)})
    words = ["data.num_train=64", "data.num_test=16", "model.scalar_embedding=fourier"]
    with pytest.raises(UserError, match="model.scalar_embedding=fourier conflicts .*model.scalar_embedding=linear"):
        child_config(load_config("toy", overrides=words), parent, given={"scalar_embedding"})


def test_element_rows_follow_the_atomic_number_and_new_ones_start_fresh():
    parent = load_parent("qm9")  # H C N O F
    words = [f"data.data_dir={SDF}", "data.novelty=false", "data.geometry=false"]
    cfg = child_config(load_config("molecules", overrides=words), parent)
    adapter = make_adapter(cfg)
    assert adapter.elements == [1, 6, 7, 8, 9, 16, 17, 35]
    torch.manual_seed(0)
    model = Unite(adapter, cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    done = inherit_weights(model, adapter, parent)
    assert done.new_rows == 9  # S, Cl, Br in the embedding and in the type head's weight and bias
    got, theirs = model.state_dict(), parent.weights
    for name in ("embedder.type_embed.weight", "heads.types.weight", "heads.types.bias"):
        assert torch.equal(got[name][:5], theirs[name][:5])  # H C N O F kept
        assert torch.equal(got[name][5:8], fresh[name][5:8])  # S Cl Br as from scratch
    assert torch.equal(got["embedder.type_embed.weight"][8], theirs["embedder.type_embed.weight"][5])  # padding
    n = theirs["encoder.reg_embed"].shape[0]  # 29 positions; the SDF's largest molecule has 46 atoms
    assert torch.equal(got["encoder.reg_embed"][:n], theirs["encoder.reg_embed"])
    assert torch.equal(got["encoder.reg_embed"][n:], fresh["encoder.reg_embed"][n:])


def test_the_element_table_is_matched_by_atomic_number_not_by_position():
    child = QM9Adapter(QM9Config(elements=[1, 5, 6, 8]))  # boron is new and sits between H and C
    rows = child.inherit_rows({"elements": [1, 6, 7, 8, 9]}, {})
    assert rows["embedder.type_embed.weight"] == [0, -1, 1, 3, 5]  # the last: padding to padding
    assert rows["heads.types.weight"] == rows["heads.types.bias"] == [0, -1, 1, 3]
    fixed = QM9Adapter(QM9Config(elements=[1, 6], registers="fixed"))
    assert fixed.inherit_rows({"elements": [6, 1], "registers": "fixed"}, {})["heads.types.bias"] == [1, 0, 2]
    assert fixed.inherit_rows({}, {"elements": [6]})["heads.types.bias"] == [-1, 0, -1]  # the state's table wins


def test_evaluate_reads_the_requested_chemical_system_and_reports_the_share_in_it(tmp_path):
    import json
    from types import SimpleNamespace

    from unite_sci.engine import requested_condition

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "samples_meta.json").write_text(json.dumps({"condition": {"chemsys": "Li-Fe-O"}}))
    assert requested_condition(tmp_path / "s") == requested_condition(tmp_path / "s" / "samples.npz") == {
        "chemsys": "Li-Fe-O"}
    assert requested_condition(tmp_path) == {}
    adapter = make_adapter(load_config("mp20"))
    li, fe, o, mn = 3, 26, 8, 25
    samples = [SimpleNamespace(z=np.array(z)) for z in ([li, fe, o, o], [fe, o], [li, mn, o], [li, li, fe, o])]
    assert adapter.condition_metrics(samples, {"chemsys": "Li-Fe-O"}) == {"chemsys/inside_pct": 75.0,
                                                                         "chemsys/exact_pct": 50.0}
    assert adapter.condition_metrics(samples, {"composition": "LiFeO2"}) == {}
