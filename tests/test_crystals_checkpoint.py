"""A crystal checkpoint carries what sampling needs from the data (atom-count histogram, lattice statistics,
the condition pool of chemsys / composition models): sampling works with the training files gone."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unite_sci.testing import TINY

FIXTURE = Path(__file__).parent / "data" / "crystals" / "offline"  # a few real MP-20 rows, offline layout


@pytest.fixture(scope="module")
def chemsys_run(tmp_path_factory):
    """A 2-step chemsys + composition model trained on a copy of the fixture, the copy deleted afterwards."""
    from unite_sci.engine import load_config, train

    tmp = tmp_path_factory.mktemp("chemsys")
    data = tmp / "crystals"
    shutil.copytree(FIXTURE, data)
    cfg = load_config("mp20", overrides=TINY + [
        f"data.offline_root={data}", "data.holdout_fraction=0.25", "data.cache_dir=", "data.load_workers=1",
        "data.eval_workers=1", "data.condition_on=[composition,chemsys]", "train.max_steps=2",
        "train.batch_size=4", "train.sample_every=0", "train.compile=false", "train.progress=false",
        "sample.steps=2", "sample.solver=euler", f"out={tmp / 'run'}"])
    summary = train(cfg)
    pool = [z.copy() for z in _adapter_pool(cfg)]
    shutil.rmtree(data)
    return Path(summary["checkpoint"]), pool, tmp


def _adapter_pool(cfg):
    from unite_sci.engine import make_adapter

    adapter = make_adapter(cfg)
    return adapter.build_splits()["train"].z


def test_the_checkpoint_holds_the_training_crystals_condition_pool(chemsys_run):
    from unite_sci.engine import load_model

    ckpt, pool, _ = chemsys_run
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["adapter_state"]
    assert state["condition_pool_z"].dtype == torch.uint8
    assert state["condition_pool_sizes"].tolist() == [len(z) for z in pool]
    loaded = load_model(str(ckpt))
    assert [z.tolist() for z in loaded.adapter.conditions.pool] == [z.tolist() for z in pool]


@pytest.mark.parametrize("condition", [{}, {"chemsys": "Li-Fe-O"}, {"composition": "LiFeO2"}])
def test_sampling_needs_no_data_files(chemsys_run, condition):
    from unite_sci.engine import sample_to_disk

    ckpt, _, tmp = chemsys_run
    assert not (tmp / "crystals").exists()
    out = tmp / f"samples-{'-'.join(condition) or 'free'}"
    sample_to_disk(str(ckpt), str(out), 3, {"steps": 2, "solver": "euler"}, condition=dict(condition))
    z = np.load(out / "samples.npz", allow_pickle=False)
    assert len(z.files) > 0 and (out / "cells.png").is_file()
