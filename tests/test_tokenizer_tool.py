"""The Generative Encoder as a tool (issue #14 item 4): ``unite_sci.load`` with encode / decode /
reconstruct / sample, the ``encode`` / ``reconstruct`` / ``probe`` commands, and the ridge probe."""
import json

import numpy as np
import pytest
import torch

import unite_sci
from unite_sci.api import Latents
from unite_sci.cli import main
from unite_sci.errors import UserError
from unite_sci.probe import fit_and_score, ridge

from test_trainer import make_trainer


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    tr = make_trainer(out, "train.max_steps=30")
    return str(tr.fit()["checkpoint"])


def test_encode_gives_one_latent_per_real_register_and_a_pooled_mean(toy_ckpt):
    m = unite_sci.load(toy_ckpt)
    objs = [np.random.default_rng(i).normal(size=(n, 2)).astype(np.float32) for i, n in enumerate([5, 9, 7])]
    lat = m.encode(objs)
    extra = m.adapter.layout.extra
    assert [len(z) for z in lat.per_register] == [5 + extra, 9 + extra, 7 + extra]
    assert lat.pooled.shape == (3, m.cfg.model.latent_dim)
    assert np.allclose(lat.pooled[1], lat.per_register[1].mean(0), atol=1e-5)
    again = m.encode(objs)  # the same seed: the same latents
    assert all(np.array_equal(a, b) for a, b in zip(lat.per_register, again.per_register))
    assert not np.array_equal(m.encode(objs, seed=1).pooled, lat.pooled)


def test_decode_of_encode_is_reconstruct_and_latents_round_trip_a_file(toy_ckpt, tmp_path):
    m = unite_sci.load(toy_ckpt)
    objs = m.adapter.batch_to_domain(m.adapter.collate(m.adapter.build_splits()["test"][:4]))
    lat = m.encode(objs)
    decoded = m.decode(lat)
    recons, report = m.reconstruct(objs)
    assert [d.shape for d in decoded] == [o.shape for o in objs]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(decoded, recons))
    back = Latents.load(lat.save(tmp_path / "lat.npz"))
    assert all(np.array_equal(a, b) for a, b in zip(back.per_register, lat.per_register))
    assert np.array_equal(back.pooled, lat.pooled)
    with pytest.raises(UserError, match="latents"):
        m.decode(Latents([np.zeros((3, 99), np.float32)], np.zeros((1, 99), np.float32)))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(UserError, match="not a latents file"):
        Latents.load(tmp_path / "junk.npz")


def test_sample_with_a_class_condition_and_bad_conditions(toy_ckpt):
    m = unite_sci.load(toy_ckpt)
    assert len(m.sample(4, condition={"class": 1})) == 4 and len(m.sample(3, condition=0)) == 3
    with pytest.raises(UserError, match="not a class"):
        m.sample(2, condition={"class": 7})
    with pytest.raises(UserError, match="unknown condition"):
        m.sample(2, condition={"class": 0, "gap": 3.0})
    with pytest.raises(UserError, match="num must be"):
        m.sample(0)


def test_ridge_recovers_a_linear_map_and_the_probe_prefers_informative_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    w_true = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    w, b = ridge(x, x @ w_true + 4.0, alpha=1e-6)
    assert np.allclose(w, w_true, atol=1e-4) and abs(b - 4.0) < 1e-4
    y = x @ w_true + 0.01 * rng.normal(size=400)
    cut = {"train": slice(0, 200), "val": slice(200, 300), "test": slice(300, 400)}
    good = fit_and_score({k: x[s] for k, s in cut.items()}, {k: y[s] for k, s in cut.items()})
    noise = rng.normal(size=(400, 5))
    bad = fit_and_score({k: noise[s] for k, s in cut.items()}, {k: y[s] for k, s in cut.items()})
    assert good["r2"] > 0.99 and good["mae"] < 0.05 and bad["r2"] < 0.2


def test_qm9_encode_reconstruct_and_probe_commands(tmp_path, capsys):
    """The commands in this process (`cli.main`, as the console script calls it): a subprocess per command
    cost 90 s of interpreter and library start-up."""

    def cli(*args):
        rc = main([str(a) for a in args])
        return rc, capsys.readouterr().err

    small = ["data.num_train=64", "data.num_val=16", "data.num_test=16", "data.eval_workers=1"]
    rc, err = cli("train", "--modality", "qm9", "--max-steps", 3, "--out", tmp_path / "run", "train.batch_size=8",
                  "train.progress=false", "model.preset=tiny", *small)
    assert rc == 0, err[-2000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    rc, err = cli("sample", "--checkpoint", ckpt, "--num", 4, "--out", tmp_path / "s", "--steps", 2)
    assert rc == 0, err[-2000:]
    rc, err = cli("encode", "--checkpoint", ckpt, "--inputs", tmp_path / "s", "--out", tmp_path / "lat.npz")
    assert rc == 0, err[-2000:]
    with np.load(tmp_path / "lat.npz") as f:
        assert f["pooled"].shape[0] == 4 and f["sizes"].sum() == f["latents"].shape[0]
    rc, err = cli("reconstruct", "--checkpoint", ckpt, "--inputs", tmp_path / "s", "--out", tmp_path / "rec")
    assert rc == 0, err[-2000:]
    report = json.loads((tmp_path / "rec" / "report.json").read_text())
    assert report["num_inputs"] == 4 and "match" in json.dumps(report) and report["checkpoint"] == str(ckpt)
    assert any(p.name.startswith("samples") for p in (tmp_path / "rec").iterdir())
    rc, err = cli("probe", "--checkpoint", ckpt, "--property", "gap", "--num-train", 40, "--num-val", 10,
             "--num-test", 10, "--out", tmp_path / "probe.json")
    assert rc == 0, err[-2000:]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["unit"] == "meV" and probe["items"] == {"train": 40, "val": 10, "test": 10}
    assert probe["trained"]["mae"] > 0 and probe["random_init"]["mae"] > 0 and probe["mean_predictor_mae"] > 0
    rc, err = cli("probe", "--checkpoint", ckpt, "--property", "colour")
    assert rc == 2 and "unknown QM9 property 'colour'" in err and len(err.splitlines()) == 1
    rc, err = cli("encode", "--checkpoint", ckpt, "--inputs", tmp_path / "nowhere", "--out", tmp_path / "x.npz")
    assert rc == 2 and "do not exist" in err and len(err.splitlines()) == 1


def test_qm9_items_from_files_are_centred_like_the_data_set():
    from unite_sci_modalities.molecules.data import molecule_item

    item = molecule_item(np.array([8, 1, 1]), np.array([[1.0, 1.0, 1.0], [1.8, 1.6, 1.0], [0.2, 1.6, 1.0]]))
    from unite_sci_modalities.atoms import masses
    m = torch.tensor(masses(np.array([8, 1, 1])), dtype=torch.float32)
    assert torch.allclose((m[:, None] * item.pos).sum(0), torch.zeros(3), atol=1e-5)
    with pytest.raises(Exception, match="as many coordinates"):
        molecule_item(np.array([6, 1]), np.zeros((3, 3)))


def test_sample_command_takes_a_class_condition(toy_ckpt, tmp_path, capsys):
    """In this process (`cli.main`); the console script's own start-up is covered by tests/test_cli.py."""
    rc = main(["sample", "--checkpoint", str(toy_ckpt), "--num", "4", "--steps", "2", "--out", str(tmp_path / "s"),
               "--condition", "class=1"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    meta = json.loads((tmp_path / "s" / "samples_meta.json").read_text())
    assert meta["condition"] == {"class": "1"} and meta["num_samples"] == 4
    for bad, msg in [("class=9", "class 9 is not a class"), ("gap=3", "unknown condition"),
                     ("class=x", "class must be an integer"), ("class", "KEY=VALUE")]:
        capsys.readouterr()
        rc = main(["sample", "--checkpoint", str(toy_ckpt), "--num", "2", "--out", str(tmp_path / "b"), "--condition", bad])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, (bad, err)
