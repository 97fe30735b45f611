"""Image adapter: conformance, patch/grid layout, loss, files, and a CLI smoke run on real Fashion-MNIST.

The fast tests skip the Inception networks (``data.fid=false``, the default: opt-in); the FID paths run under
``-m slow``.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from unite_sci.config import build_config
from unite_sci.errors import ConfigError, DataError
from unite_sci.model import sincos_2d
from unite_sci.testing import TINY, AdapterConformance
from unite_sci.unite import Unite
from unite_sci_modalities.images.adapter import UNKNOWN, ImageAdapter, ImageConfig, ImageSample
from unite_sci_modalities.images.data import patchify

SMALL = ["data.num_train=32", "data.num_val=8", "data.num_test=8", "data.nn_reference_count=32",
         "data.fid=false"]


class TestImagesConformance(AdapterConformance):
    modality = "images"
    data_overrides = SMALL
    perfect_reconstruction = {"reconstruction/psnr_db": 100.0, "reconstruction/lpips": 0.0}  # MSE floor 1e-10


@pytest.fixture(scope="module")
def setup():
    cfg = build_config("images", ImageConfig, [], TINY + SMALL + ["model.latent_dim=4"])
    a = ImageAdapter(cfg.data)
    batch = a.collate([a.build_splits()["train"][i] for i in range(6)])
    return a, cfg, batch


def test_splits_are_disjoint_and_padded(setup):
    a, _, batch = setup
    splits = a.build_splits()
    train, val = splits["train"].source, splits["val"].source
    assert not set(train.indices) & set(val.indices)  # val is carved out of the official train images
    assert len(splits["test"]) == 8 and splits["test"].source.source.name == "fashion_mnist/test"
    x = batch.data["images"]
    assert x.shape == (6, 1, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert (x[..., :2, :] == 0).all() and (x[..., :, -2:] == 0).all()  # 28 -> 32 zero padding
    assert batch.cond.dtype == torch.long and batch.cond.max() < 10


def test_latents_form_a_square_grid_aligned_with_patches(setup):
    a, cfg, batch = setup
    assert a.layout.count == 64 and not a.layout.per_element  # (32 / 4)^2 registers
    model = Unite(a, cfg)
    z0 = model.encode(batch)
    assert z0.shape == (6, 64, 4)
    # register k and patch k sit at the same cell (k // 8, k % 8) of one row-major 2-D table
    assert torch.equal(model.decoder.pos, sincos_2d(8, model.decoder.pos.shape[1]))
    assert torch.equal(model.embedder.pos, sincos_2d(8, model.embedder.pos.shape[1]))
    assert model.decode(z0, None)["images"].shape == (6, 1, 32, 32)


def test_patchify_round_trip_through_the_heads(setup):
    """Heads whose projection is the identity on patch pixels give back the image: the heads
    unpatchify exactly the layout the embedder patchifies."""
    a, _, batch = setup
    heads = a.build_heads(16)  # width = p * p * C = 16
    heads.activation = "clamp"
    with torch.no_grad():
        heads.proj.weight.copy_(torch.eye(16))
        heads.proj.bias.zero_()
    x = batch.data["images"]
    assert torch.equal(heads(patchify(x, 4), None)["images"], x)


def test_loss_is_zero_for_a_perfect_reconstruction_and_lpips_is_frozen(setup):
    a, cfg, batch = setup
    loss, parts = a.reconstruction_loss({"images": batch.data["images"]}, batch)
    assert float(loss) < 1e-6 and set(parts) == {"l1", "lpips"}
    worse, _ = a.reconstruction_loss({"images": batch.data["images"].flip(-1)}, batch)
    assert float(worse) > 0.05
    lp = a.lpips()
    assert not lp.training and not any(p.requires_grad for p in lp.parameters())
    model = Unite(a, cfg)
    assert not any("lpips" in k or "alexnet" in k for k in model.state_dict())  # never saved nor averaged


def test_the_loss_network_is_built_with_the_model_not_inside_the_first_forward():
    """A compiled forward that built LPIPS lazily traced its file reads (graph breaks, warnings on first use)."""
    cfg = build_config("images", ImageConfig, [], TINY + SMALL + ["model.latent_dim=4"])
    a = ImageAdapter(cfg.data)
    assert a._lpips is None
    Unite(a, cfg)
    assert a._lpips is not None
    no_lpips = build_config("images", ImageConfig, [], TINY + SMALL + ["model.latent_dim=4", "data.lpips_weight=0"])
    b = ImageAdapter(no_lpips.data)
    Unite(b, no_lpips)
    assert b._lpips is None  # not built where the loss has no LPIPS term


def test_to_domain_clamps_and_quantises(setup):
    a, _, _ = setup
    out = {"images": torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 5)}
    (s,) = a.to_domain(out, None)
    assert s.image.dtype == np.uint8 and s.image.ravel().tolist() == [0, 0, 128, 255, 255]
    assert s.label is None
    labelled = a.with_labels([ImageSample(s.image)] * 12)
    assert [x.label for x in labelled] == [i % 10 for i in range(12)]  # the core's class-balanced order


def test_hflip_augmentation_only_where_asked(setup):
    a, cfg, batch = setup
    assert a.augment(batch, torch.Generator().manual_seed(0)) is batch  # auto: none for Fashion-MNIST
    flip = ImageAdapter(build_config("images", ImageConfig, [], SMALL + ["data.augment=hflip"]).data)
    out = flip.augment(batch, torch.Generator().manual_seed(0)).data["images"]
    x = batch.data["images"]
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and not all(mirrored)


def test_export_and_load_npz_and_png_folder(setup, tmp_path):
    a, _, batch = setup
    samples = a.batch_to_domain(batch)
    npz, grid = a.export(samples, tmp_path / "s")
    assert npz.name == "samples.npz" and grid.name == "grid.png"
    back = a.load_samples(tmp_path / "s")
    assert [s.label for s in back] == batch.cond.tolist()
    assert all(np.array_equal(x.image, y.image) for x, y in zip(back, samples))
    from PIL import Image

    (tmp_path / "pngs").mkdir()
    for i, s in enumerate(samples):
        Image.fromarray(s.image[0]).save(tmp_path / "pngs" / f"{i:03d}.png")
    pngs = a.load_samples(tmp_path / "pngs")
    assert len(pngs) == 6 and pngs[0].label == UNKNOWN and np.array_equal(pngs[2].image, samples[2].image)
    metrics = a.evaluate(pngs, str(tmp_path / "ps.csv"))
    assert metrics["num_samples"] == metrics["unlabelled_samples"] == 6 and sum(metrics["samples_per_class"]) == 0
    assert "images/gfid" not in metrics  # data.fid=false
    assert a.export(pngs, tmp_path / "again")[1].exists()  # unknown labels: a plain grid
    with pytest.raises(DataError, match="expects"):
        ImageAdapter(build_config("images", ImageConfig, [], ["data.image_size=28"]).data).load_samples(npz)


def test_reconstruction_metrics_without_fid(setup):
    a, _, batch = setup
    inputs = a.batch_to_domain(batch)
    noisy = [ImageSample(np.clip(s.image.astype(int) + 8, 0, 255).astype(np.uint8), s.label) for s in inputs]
    m = a.evaluate_reconstruction(inputs, noisy)
    assert 25 < m["reconstruction/psnr_db"] < 36 and m["reconstruction/lpips"] > 0
    assert a.evaluate_reconstruction(inputs, inputs)["reconstruction/psnr_db"] == pytest.approx(100.0)
    assert a.evaluate_reconstruction([], []) == {}


@pytest.mark.parametrize("bad", ["data.dataset=cifar", "data.patch_size=5", "data.channels=2",
                                 "data.pixel_activation=tanh", "data.lpips_net=squeeze",
                                 "data.num_classes=5", "data.augment=rotate"])
def test_bad_image_config(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        build_config("images", ImageConfig, [], [bad])


def test_folder_needs_data_dir_and_matching_class_count():
    with pytest.raises(ConfigError, match="data_dir"):
        build_config("images", ImageConfig, [], ["data.dataset=folder"])
    root = os.path.join(os.path.dirname(__file__), "data/images/folder")
    cfg = build_config("images", ImageConfig, [], ["data.dataset=folder", f"data.data_dir={root}"])
    with pytest.raises(DataError, match="2 classes"):
        ImageAdapter(cfg.data).build_splits()


def test_cli_train_sample_evaluate(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "unite_sci.cli", *map(str, a)], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("train", "--modality", "images", "--max-steps", 3, "--out", tmp_path / "run", "train.batch_size=8",
            "train.progress=false", "model.latent_dim=4", *TINY[1:], *SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("sample", "--checkpoint", tmp_path / "run/checkpoints/last.pt", "--num", 12, "--steps", 2,
            "--cfg", 2.0, "--solver", "euler", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "s/samples_meta.json").read_text())
    assert meta["cfg_scale"] == 2.0 and (tmp_path / "s/grid.png").exists()
    r = run("evaluate", "--modality", "images", "--samples", tmp_path / "s/samples.npz", "--per-sample",
            tmp_path / "p.csv", *SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["num_samples"] == 12 and m["samples_per_class"] == [2, 2] + [1] * 8


# ----------------------------------------------------------------------------- FID (slow on a CPU)
@pytest.mark.slow
def test_gfid_and_rfid_on_real_images():
    """Real test images score a lower gFID than the same images blurred into blocks, and a
    reconstruction equal to its input has rFID 0. (Reference statistics are cached after the first run.)"""
    cfg = build_config("images", ImageConfig, [], SMALL[:-1] + ["data.fid=true", "data.num_test=30",
                                                          "data.fid_reference_count=100"])
    a = ImageAdapter(cfg.data)
    test = a.build_splits()["test"]
    real = a.batch_to_domain(a.collate([test[i] for i in range(30)]))
    blocky = [ImageSample(s.image[:, ::4, ::4].repeat(4, 1).repeat(4, 2), s.label) for s in real]
    good, bad = a.evaluate(real)["images/gfid"], a.evaluate(blocky)["images/gfid"]
    assert good < bad
    rec = a.evaluate_reconstruction(real, real)
    assert rec["reconstruction/rfid"] < 1e-6 and "inception" in rec
