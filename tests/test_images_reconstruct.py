"""`unite-sci reconstruct` on images keeps each input's label in samples.npz (it numbered them 0-9 in turn)."""
from unite_sci.config import build_config
from unite_sci.testing import TINY
from unite_sci_modalities.images import io as iio
from unite_sci_modalities.images.adapter import UNKNOWN, ImageAdapter, ImageConfig, ImageSample

import numpy as np


def test_reconstructions_are_exported_with_their_inputs_labels(tmp_path):
    a = ImageAdapter(build_config("images", ImageConfig, [], TINY + ["data.fid=false"]).data)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (1, 32, 32), dtype=np.uint8) for _ in range(4)]
    inputs = [ImageSample(p, y) for p, y in zip(pixels, [7, 7, 2, 9])]
    recons = [ImageSample(255 - p) for p in pixels]  # fresh decoder output: no label
    a.export_reconstructions(inputs, recons, tmp_path / "labelled")
    images, labels, _ = iio.read_npz(tmp_path / "labelled" / "samples.npz")
    assert labels.tolist() == [7, 7, 2, 9] and np.array_equal(images[0], recons[0].image)
    a.export_reconstructions([ImageSample(p, UNKNOWN) for p in pixels], recons, tmp_path / "plain")
    assert iio.read_npz(tmp_path / "plain" / "samples.npz")[1].tolist() == [UNKNOWN] * 4  # files without labels
