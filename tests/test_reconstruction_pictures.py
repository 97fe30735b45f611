"""Reconstruction pictures show each input beside its output; crystal cell pictures carry an element
colour key and say which cell could not be built."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from test_qm9_metrics import PS, ZS
from unite_sci.adapter import AdapterBase


def test_qm9_reconstruction_gallery_pairs_inputs_with_outputs(tmp_path: Path, monkeypatch) -> None:
    from unite_sci.config import build_config
    from unite_sci_modalities.molecules import render
    from unite_sci_modalities.qm9.adapter import QM9Adapter, QM9Config

    drawn = []
    real = render.gallery_png
    monkeypatch.setattr(render, "gallery_png", lambda path, z, pos, **kw: drawn.append((z, kw)) or real(path, z, pos, **kw))
    inputs = list(zip(ZS[:3], PS[:3]))
    recons = [(z, p + 0.01) for z, p in inputs]
    adapter = QM9Adapter(build_config("qm9", QM9Config, [], []).data)
    files = adapter.export_reconstructions(inputs, recons, tmp_path)
    assert tmp_path / "gallery.png" in files and (tmp_path / "gallery.png").stat().st_size > 1000
    z, kw = drawn[-1]  # the export's own gallery first, then the pairs over it
    assert kw["titles"] == ["input 0", "reconstruction 0", "input 1", "reconstruction 1", "input 2",
                            "reconstruction 2"]
    assert all(np.array_equal(a, b) for a, b in zip(z, [ZS[0], ZS[0], ZS[1], ZS[1], ZS[2], ZS[2]]))


def test_the_default_is_the_plain_export(tmp_path: Path) -> None:
    class Plain(AdapterBase):
        def export(self, samples, out_dir):
            return [Path(out_dir) / f"{len(samples)}.txt"]

    assert Plain(None).export_reconstructions([1, 2], [3, 4, 5], tmp_path) == [tmp_path / "3.txt"]


def test_cells_png_has_an_element_colour_key_and_names_a_broken_cell(tmp_path: Path) -> None:
    import matplotlib.image as mpimg
    from ase.data.colors import jmol_colors
    from pymatgen.core import Lattice, Structure

    from unite_sci_modalities.crystals.io import plot_cells

    salt = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    garbage = (np.array([6]), np.array([[np.nan, 0, 0]]), np.ones(3), np.full(3, 90.0))
    path = plot_cells([salt, garbage, salt], tmp_path / "cells.png", cols=3, titles=["input 0", "output 0", "x"])
    image = mpimg.imread(path)[..., :3]
    key = image[int(image.shape[0] * 0.85):]  # the band under the cells
    for z in (11, 17):  # Na, Cl: their Jmol colours appear in the key
        assert (np.abs(key - jmol_colors[z]).max(-1) < 0.02).any(), z
    assert not (np.abs(key - jmol_colors[8]).max(-1) < 0.02).any()  # no oxygen was drawn: no red in the key
