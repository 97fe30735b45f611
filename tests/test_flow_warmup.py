"""flow.loss_warmup_steps: the flow loss's weight in the total ramps linearly 0 -> 1 over the first n steps."""
import json

import pytest
import torch

from unite_sci.config import build_config
from unite_sci.testing import TINY
from unite_sci.trainer import Trainer
from unite_sci_modalities.toy import ToyAdapter, ToyConfig


def make_trainer(out, *extra: str) -> Trainer:
    cfg = build_config("toy", ToyConfig, [], TINY + [
        "data.num_train=32", "data.num_test=8", "train.batch_size=8", "train.max_steps=5",
        "train.log_every=1", "train.progress=false", *extra])
    return Trainer(cfg, ToyAdapter(cfg.data), out)


@pytest.mark.parametrize("ramp", [0, 4])
def test_total_loss_is_rec_plus_ramped_flow(tmp_path, ramp):
    tr = make_trainer(tmp_path, f"flow.loss_warmup_steps={ramp}")
    tr.fit()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "flow" in r and "rec" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:  # a row is logged after its step: step s ran with phase step s - 1
        weight = min(1.0, (r["step"] - 1) / ramp) if ramp else 1.0
        assert r["loss"] == pytest.approx(r["rec"] + weight * r["flow"], rel=1e-5, abs=1e-6)
    assert float(tr.model.flow_weight) == 1.0


def test_two_stage_denoiser_phase_is_never_ramped(tmp_path):
    tr = make_trainer(tmp_path, "flow.loss_warmup_steps=100", "train.mode=two_stage",
                      "model.shared_weights=false", "train.tokenizer_fraction=0.4")
    tr.fit()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    den = [r for r in rows if r.get("phase") == "denoiser" and "flow" in r]
    assert den and all(r["loss"] == pytest.approx(r["flow"], rel=1e-5) for r in den)
    assert torch.is_tensor(tr.model.flow_weight)
