"""The pixel-space peer of `benchmark images`: UNITE's flow objective on pixels, written out independently
here, and a tiny run whose samples.npz the image scoring reads back."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unite_sci.config import FlowConfig, Prediction
from unite_sci.errors import UserError

peer = pytest.importorskip("unite_sci_benchmarks.pixel_peer")

SMALL = ["data.num_train=64", "data.num_val=8", "data.num_test=8", "data.nn_reference_count=32", "data.fid=false",
         "train.batch_size=8", "train.threads=1", "sample.steps=2", "sample.batch_size=10"]


class Stub(nn.Module):
    """A known network: F = 0.5 x + 0.1 * label + t (per sample), in diffusers' output wrapper."""

    def forward(self, x, timestep, class_labels):
        out = 0.5 * x + 0.1 * class_labels.view(-1, 1, 1, 1) + (timestep / peer.TIME_SCALE).view(-1, 1, 1, 1)
        return type("Out", (), {"sample": out})()


def expected_loss(x1, labels, seed, f: FlowConfig, null, velocity):
    """The objective by hand: t' = a s / (1 + (a - 1) s), s = sigmoid(m + sd n); x_t = t x1 + (1 - t) eps;
    labels dropped with probability p; loss = mean((x1 - x1_hat)^2 / max(1 - t, clamp)^2), summed over K."""
    torch.manual_seed(seed)
    b, total = x1.shape[0], 0.0
    for _ in range(f.flow_batches):
        n, eps, u = torch.randn(b).numpy(), torch.randn_like(x1).numpy(), torch.rand(b).numpy()
        s = 1 / (1 + np.exp(-(f.logit_mean + f.logit_std * n)))
        t = (f.shift * s / (1 + (f.shift - 1) * s)).reshape(-1, 1, 1, 1)
        x_t = t * x1.numpy() + (1 - t) * eps
        y = np.where(u < f.label_dropout, null, labels.numpy()).reshape(-1, 1, 1, 1)
        out = 0.5 * x_t + 0.1 * y + t
        x1_hat = x_t + (1 - t) * out if velocity else out
        total += float(np.mean((x1.numpy() - x1_hat) ** 2 / np.maximum(1 - t, f.clamp) ** 2))
    return total


@pytest.mark.parametrize("prediction,k", [(Prediction.x, 1), (Prediction.velocity, 2)])
def test_flow_objective_is_unites_written_out(prediction, k):
    f = FlowConfig(shift=0.5, logit_mean=0.3, logit_std=1.2, clamp=0.05, flow_batches=k, label_dropout=0.5,
                   prediction=prediction)
    x1 = torch.rand(6, 1, 4, 4) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    net = peer.PixelFlowNet(Stub(), prediction.value)
    torch.manual_seed(7)
    got = float(peer.flow_objective(net, x1, labels, f, null=10))
    want = expected_loss(x1, labels, 7, f, 10, prediction == Prediction.velocity)
    assert got == pytest.approx(want, rel=1e-5)
    assert math.isfinite(got) and got > 0


def test_parse_channels():
    assert peer.parse_channels("") == peer.CHANNELS
    assert peer.parse_channels("32,64,64") == (32, 64, 64)
    with pytest.raises(UserError, match="integers"):
        peer.parse_channels("32,x")
    with pytest.raises(UserError, match="multiple"):
        peer.parse_channels("8,12")


@pytest.mark.slow  # ~10-20 s: a UNet, Heun sampling and the image metrics on one thread
def test_tiny_peer_run_writes_samples_that_the_image_scoring_reads(tmp_path):
    pytest.importorskip("diffusers")
    from unite_sci.engine import evaluate_path

    run = tmp_path / "pixel_unet_s0"
    res = peer.run_job("images", run, 0.0, 3, 10, SMALL + ["train.seed=0"], "8,16")
    assert res["train_steps"] == 3 and res["model"]["block_out_channels"] == [8, 16]
    assert res["generation"]["samples_per_class"] == [1] * 10
    on_disk = json.loads((run / "eval" / "results.json").read_text())
    rescored = evaluate_path("images", str(run / "eval" / "samples" / "samples.npz"),
                             data_overrides=[o for o in SMALL if o.startswith("data.")])
    assert rescored["images/nn_train_rmse"] == pytest.approx(on_disk["generation"]["images/nn_train_rmse"], abs=1e-7)
    assert rescored["images/mean_intensity"] == pytest.approx(on_disk["generation"]["images/mean_intensity"], abs=1e-7)
    # a finished run is sampled and scored again without training: same checkpoint, same samples
    stamp = (run / "peer" / "last.pt").stat().st_mtime
    again = peer.run_job("images", run, 0.0, 3, 10, SMALL + ["train.seed=0"], "8,16")
    assert (run / "peer" / "last.pt").stat().st_mtime == stamp
    assert again["generation"]["images/nn_train_rmse"] == on_disk["generation"]["images/nn_train_rmse"]


def test_peer_refuses_other_modalities(tmp_path):
    with pytest.raises(UserError, match="draws images"):
        peer.run_job("qm9", Path(tmp_path), 1.0, 0, 4, [], "")
