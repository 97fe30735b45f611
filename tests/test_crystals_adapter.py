"""Crystal adapter: conformance (Perov-5 and MP-20 offline fixtures), periodic coordinate decoding,
translation augmentation, composition-restricted decoding, and a CLI smoke run."""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from unite_sci.config import build_config
from unite_sci.errors import ConfigError
from unite_sci.testing import TINY, AdapterConformance
from unite_sci_modalities.crystals.adapter import (NUM_TYPES, CrystalAdapter, CrystalConfig, frac_to_sincos,
                                                   sincos_to_frac)

HERE = Path(__file__).parent / "data" / "crystals"
FAST = ["data.cache_dir=", "data.load_workers=1", "data.eval_workers=1"]
MP20_OFFLINE = FAST + [f"data.offline_root={HERE / 'offline'}", "data.holdout_fraction=0.25"]


@lru_cache(maxsize=1)
def perov5_dir() -> Path:
    """Canonical-layout folder whose train/val/test are the three real Perov-5 rows of the fixture."""
    d = Path(tempfile.mkdtemp(prefix="perov5_"))
    atexit.register(shutil.rmtree, d, True)
    for split in ("train", "val", "test"):
        shutil.copy(HERE / "perov5_rows.csv", d / f"{split}.csv")
    return d


def perov5_overrides() -> list[str]:
    return FAST + ["data.dataset=perov5", f"data.data_dir={perov5_dir()}"]


class TestPerov5Conformance(AdapterConformance):
    modality = "mp20"
    batch_size = 3
    perfect_reconstruction = {"Perov-5/match_rate_pct": 100.0, "Perov-5/rmse": 0.0}

    def config(self):
        self.data_overrides = perov5_overrides()
        return super().config()


class TestMP20OfflineConformance(AdapterConformance):
    modality = "mp20"
    data_overrides = MP20_OFFLINE
    perfect_reconstruction = {"MP-20 offline/match_rate_pct": 100.0, "MP-20 offline/rmse": 0.0}


def make(*over):
    cfg = build_config("mp20", CrystalConfig, [], TINY + MP20_OFFLINE + list(over))
    a = CrystalAdapter(cfg.data)
    train = a.build_splits()["train"]
    return a, cfg, a.collate([train[i] for i in range(6)])


def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher
    return StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)


def circular_close(a, b, atol):
    """Fractional coordinates equal modulo 1 (float32 can round 0.99999999 up to 1.0)."""
    return np.abs(np.remainder(np.asarray(a) - np.asarray(b) + 0.5, 1.0) - 0.5).max(initial=0) < atol


def _structure(item):
    from unite_sci_modalities.crystals.data import to_structure
    return to_structure(*item[:4])


# ----------------------------------------------------------------------------- periodic coordinates
def test_sincos_decoding_round_trip():
    g = torch.Generator().manual_seed(0)
    frac = torch.cat([torch.rand(500, 3, generator=g, dtype=torch.float64),
                      torch.tensor([[0.0, 1e-9, 1 - 1e-9], [0.5, 0.25, 0.75]], dtype=torch.float64)])
    sc = frac_to_sincos(frac)
    assert sc.shape == (502, 3, 2)
    back = sincos_to_frac(sc)
    assert ((back >= 0) & (back < 1)).all()
    circ = torch.remainder(back - frac + 0.5, 1.0) - 0.5  # distance on the circle
    assert circ.abs().max() < 1e-9
    # an unnormalised prediction decodes to the same angle; x + 1 and x - 1 are the same atom
    assert torch.allclose(sincos_to_frac(3.7 * sc), back, atol=1e-12)
    assert torch.allclose(frac_to_sincos(frac + 1), sc, atol=1e-9)
    assert torch.allclose(frac_to_sincos(frac - 1), sc, atol=1e-9)


def test_collate_round_trip_is_exact():
    a, _, batch = make()
    train = a.build_splits()["train"]
    assert batch.data["lattice"].shape == (6, 6) and batch.data["types"].shape == batch.mask.shape
    assert (batch.data["types"][~batch.mask] == NUM_TYPES).all()
    for item, back in zip([train[i] for i in range(6)], a.batch_to_domain(batch)):
        assert np.array_equal(item.z, back.z)
        assert circular_close(item.frac, back.frac, 1e-6)
        assert np.allclose(item.lengths, back.lengths, rtol=1e-5) and np.allclose(item.angles, back.angles, rtol=1e-5)


def test_translation_augmentation_keeps_the_structure():
    a, _, batch = make()
    moved = a.augment(batch, torch.Generator().manual_seed(1))
    assert not torch.allclose(moved.data["frac"][batch.mask], batch.data["frac"][batch.mask])
    assert torch.equal(moved.data["lattice"], batch.data["lattice"])
    assert torch.equal(moved.data["types"], batch.data["types"])
    assert (moved.data["frac"][~batch.mask] == 0).all()
    for x, y in zip(a.batch_to_domain(batch), a.batch_to_domain(moved)):
        sx, sy = _structure(x), _structure(y)
        assert _matcher().fit(sx, sy)
        assert _matcher().get_rms_dist(sx, sy)[0] < 1e-4
    off = make("data.random_translation=false")[0]
    assert off.augment(batch, torch.Generator()).data["frac"] is batch.data["frac"]


def test_embedding_is_periodic():
    a, _, batch = make()
    emb = a.build_embedder(32)
    shifted = dict(batch.data, frac=batch.data["frac"] + torch.randint(-2, 3, batch.data["frac"].shape))
    assert torch.allclose(emb(batch.data, batch.mask), emb(shifted, batch.mask), atol=1e-4)


# ----------------------------------------------------------------------------- loss and decoding
def _perfect(a, batch):
    types = batch.data["types"]
    logits = torch.nn.functional.one_hot(types.clamp_max(NUM_TYPES - 1), NUM_TYPES).float() * 60 - 30
    present = torch.zeros(len(batch), NUM_TYPES + 1).scatter_(1, types, 1.0)[:, :NUM_TYPES]
    return {"type_logits": logits, "sincos": frac_to_sincos(batch.data["frac"]),
            "lattice": batch.data["lattice"].clone(), "comp_logits": present * 60 - 30}


def test_perfect_prediction_has_zero_loss_and_decodes_to_the_input():
    a, _, batch = make()
    out = _perfect(a, batch)
    loss, parts = a.reconstruction_loss(out, batch)
    assert parts["coord_mse"] < 1e-10 and parts["lattice_mse"] == 0
    assert parts["type_ce"] < 1e-6 and parts["composition_bce"] < 1e-6
    for x, y in zip(a.batch_to_domain(batch), a.to_domain(out, batch.mask)):
        assert np.array_equal(x.z, y.z) and circular_close(x.frac, y.frac, 1e-5)
        assert np.allclose(x.lengths, y.lengths, rtol=1e-5)


def test_composition_decoding_keeps_atoms_to_the_predicted_elements():
    a, _, batch = make("data.type_decode=composition")
    out = _perfect(a, batch)
    noisy = torch.randn(out["type_logits"].shape, generator=torch.Generator().manual_seed(0)) * 100
    out["type_logits"] = noisy  # per-atom choices that disagree with each other
    decoded = a.to_domain(out, batch.mask)
    for x, y in zip(a.batch_to_domain(batch), decoded):
        assert set(y.z.tolist()) <= set(x.z.tolist())
    free = make("data.type_decode=argmax")[0].to_domain(out, batch.mask)
    mean = lambda items: np.mean([len(set(i.z.tolist())) for i in items])  # noqa: E731
    assert mean(free) > mean(decoded)


def test_state_restores_statistics_without_data():
    a, cfg, batch = make()
    b = CrystalAdapter(cfg.data)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.lattice_mean, b.lattice_mean) and b._splits is None
    sizes = b.sample_sizes(500, torch.Generator().manual_seed(0))
    assert b._splits is None  # sampling needs no data files
    train = a.build_splits()["train"].num_atoms
    assert sizes.min() >= train.min() and sizes.max() <= train.max()


def test_evaluate_names_protocol_and_smact():
    a, _, batch = make()
    m = a.evaluate(a.batch_to_domain(batch))
    assert m["protocol"] == "MP-20 offline" and m["smact_version"].startswith("2.6")
    assert m["MP-20 offline/struct_valid_pct"] == 100.0 and m["MP-20 offline/novel_pct"] == 0.0
    assert m["MP-20 offline/elements_per_crystal"] > 1


def test_evaluate_warns_when_the_generated_crystals_collapse(capsys):
    """Twelve copies of one real crystal: valid, 1 of 12 unique, one warning; twelve real crystals: none."""
    a, _, _ = make()
    train, test = a.build_splits()["train"], a.build_splits()["test"]
    items = a.batch_to_domain(a.collate([train[i] for i in range(9)] + [test[i] for i in range(3)]))
    assert a.evaluate(items)["MP-20 offline/unique_pct"] > 50 and "collapsed" not in capsys.readouterr().err
    same = a.batch_to_domain(a.collate([train[0]] * 12))
    m = a.evaluate(same)
    assert m["MP-20 offline/valid_pct"] == 100.0 and m["MP-20 offline/unique_pct"] == pytest.approx(100 / 12, abs=0.01)
    assert capsys.readouterr().err.count("warning: 12 generated crystals collapsed: 8.3 % of the 12 valid ones") == 1


@pytest.mark.parametrize("bad", ["data.dataset=mp21", "data.max_atoms=-1", "data.coord_freqs=0",
                                 "data.oxidation_states=smact9", "data.holdout_fraction=1.5",
                                 "data.type_decode=vote"])
def test_bad_crystal_config(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        build_config("mp20", CrystalConfig, [], [bad])


def test_composition_decoding_needs_the_head():
    with pytest.raises(ConfigError, match=r"data\.type_decode"):
        build_config("mp20", CrystalConfig, [], ["data.type_decode=composition", "data.composition_weight=0"])


# ----------------------------------------------------------------------------- CLI
def test_cli_train_sample_evaluate(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "unite_sci.cli", *map(str, a)], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    r = run("train", "--modality", "mp20", "--max-steps", 3, "--out", tmp_path / "run", "train.batch_size=3",
            "train.progress=false", *TINY[1:], *perov5_overrides())
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("sample", "--checkpoint", tmp_path / "run/checkpoints/last.pt", "--num", 4, "--steps", 2,
            "--solver", "euler", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "s/samples.npz").exists() and (tmp_path / "s/cells.png").exists()
    r = run("evaluate", "--modality", "mp20", "--samples", tmp_path / "s", "--per-sample", tmp_path / "p.csv",
            "data.novelty=false", *perov5_overrides())
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["num_samples"] == 4 and m["protocol"] == "Perov-5" and "Perov-5/valid_pct" in m
