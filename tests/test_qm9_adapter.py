"""QM9 adapter: conformance, layouts, augmentation, and a CLI smoke run on real molecules."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from unite_sci.config import build_config
from unite_sci.testing import TINY, AdapterConformance
from unite_sci.unite import Unite
from unite_sci_modalities.qm9.adapter import QM9Adapter, QM9Config

SMALL = ["data.num_train=64", "data.num_val=16", "data.num_test=16", "data.eval_workers=1"]


PERFECT = {"reconstruction/match_rate": 100.0, "reconstruction/rmsd": 0.0}


class TestQM9Conformance(AdapterConformance):
    modality = "qm9"
    data_overrides = SMALL
    perfect_reconstruction = PERFECT


class TestQM9FixedLayoutConformance(AdapterConformance):
    modality = "qm9"
    data_overrides = SMALL + ["data.registers=fixed", "data.num_registers=32"]
    perfect_reconstruction = PERFECT


def adapter(*over):
    cfg = build_config("qm9", QM9Config, [], TINY + SMALL + list(over))
    a = QM9Adapter(cfg.data)
    return a, cfg, a.collate([a.build_splits()["train"][i] for i in range(8)])


def test_collate_types_and_padding():
    a, _, batch = adapter()
    z = np.array(a.elements + [0])[batch.data["types"]]
    assert set(np.unique(z[batch.mask.numpy()])) <= {1, 6, 7, 8, 9}
    assert (batch.data["types"][~batch.mask] == len(a.elements)).all()
    inputs = a.batch_to_domain(batch)
    mols = a.build_splits()["train"].mols
    assert np.array_equal(inputs[0][0], mols.z[0]) and np.allclose(inputs[0][1], mols.pos[0])


def test_rotation_augmentation_keeps_distances():
    a, _, batch = adapter()
    rot = a.augment(batch, torch.Generator().manual_seed(1))
    d0 = torch.cdist(batch.data["pos"], batch.data["pos"])
    d1 = torch.cdist(rot.data["pos"], rot.data["pos"])
    assert torch.allclose(d0, d1, atol=1e-4) and not torch.allclose(batch.data["pos"], rot.data["pos"])


def test_perfect_prediction_has_zero_coordinate_loss():
    a, _, batch = adapter()
    logits = torch.nn.functional.one_hot(batch.data["types"].clamp_max(4), 5).float() * 50
    loss, parts = a.reconstruction_loss({"type_logits": logits, "pos": batch.data["pos"]}, batch)
    assert parts["coord_mse"] == 0 and parts["type_ce"] < 1e-6


def test_sample_sizes_follow_training_distribution():
    a, _, _ = adapter()
    sizes = a.sample_sizes(2000, torch.Generator().manual_seed(0))
    train = a.build_splits()["train"].mols.n_atoms
    assert sizes.min() >= train.min() and sizes.max() <= train.max()
    assert abs(sizes.float().mean().item() - train.mean()) < 1.0


def test_fixed_layout_slots_predict_no_atom_past_the_molecule():
    a, cfg, batch = adapter("data.registers=fixed", "data.num_registers=32")
    model = Unite(a, cfg)
    z0 = model.encode(batch)
    assert z0.shape == (8, 32, cfg.model.latent_dim)
    out = model.decode(z0, None)
    assert out["type_logits"].shape == (8, 32, 6)



def test_fixed_layout_cross_entropy_targets_no_atom_past_the_molecule():
    # the targets built here from the molecules' atomic numbers: slot i < n holds atom i's element, every
    # slot from n to K says "no atom" (class 5); logits of 50 on the target give CE ~ 0, and logits of 50 on
    # hydrogen in the empty slots cost 50 per empty slot, averaged per molecule over all K slots
    a, _, batch = adapter("data.registers=fixed", "data.num_registers=32")
    k, mols = 32, a.build_splits()["train"].mols
    n = batch.mask.sum(1)  # (8,) atoms per molecule
    target = torch.full((8, k), 5)
    for i in range(8):
        target[i, :n[i]] = torch.as_tensor([a.elements.index(int(z)) for z in mols.z[i]])
    pos = torch.zeros(8, k, 3)
    pos[:, :batch.mask.shape[1]] = batch.data["pos"]
    right = torch.nn.functional.one_hot(target, 6).float() * 50
    _, parts = a.reconstruction_loss({"type_logits": right, "pos": pos}, batch)
    assert parts["type_ce"] < 1e-6 and parts["coord_mse"] == 0
    wrong = right.clone()
    empty = torch.arange(k)[None] >= n[:, None]  # (8, K)
    wrong[empty] = torch.nn.functional.one_hot(torch.zeros(int(empty.sum()), dtype=torch.long), 6).float() * 50
    _, parts = a.reconstruction_loss({"type_logits": wrong, "pos": pos}, batch)
    expected = (50 * (k - n) / k).float().mean().item()
    assert float(parts["type_ce"]) == pytest.approx(expected, rel=1e-4)

def test_cli_train_sample_evaluate(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "unite_sci.cli", *map(str, a)], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    r = run("train", "--modality", "qm9", "--max-steps", 3, "--out", tmp_path / "run", "train.batch_size=8",
            "train.progress=false", *TINY[1:], *SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("sample", "--checkpoint", tmp_path / "run/checkpoints/last.pt", "--num", 6, "--steps", 2,
            "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "s/samples.extxyz").exists() and (tmp_path / "s/gallery.png").exists()
    r = run("evaluate", "--modality", "qm9", "--samples", tmp_path / "s/samples.sdf", "--per-sample",
            tmp_path / "p.csv", "data.novelty=false")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["num_samples"] == 6 and "edm/molecule_stability" in m


@pytest.mark.parametrize("bad", ["data.registers=grid", "data.max_atoms=2", "data.coord_scale=0"])
def test_bad_qm9_config(bad):
    from unite_sci.errors import ConfigError

    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        build_config("qm9", QM9Config, [], [bad])
