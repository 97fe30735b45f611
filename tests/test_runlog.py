"""Run logs: TensorBoard events that tensorboard's own reader reads back, train.log beside metrics.jsonl,
a first row at step 0, and no tb/ folder when train.tensorboard is off."""
import json
from pathlib import Path

import numpy as np
import pytest

from test_trainer import make_trainer
from unite_sci.runlog import format_row, scalars
from unite_sci_modalities.toy import ToyAdapter

pytest.importorskip("tensorboard")


def read_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def with_a_picture(monkeypatch):
    """Toy export plus a 20 x 30 PNG whose pixel (row 0, column 0) is red: the adapter 'draws a figure'."""
    plain = ToyAdapter.export

    def export(self, samples, out_dir):
        import matplotlib.image as mpimg

        image = np.zeros((20, 30, 3))
        image[0, 0] = (1.0, 0.0, 0.0)
        mpimg.imsave(Path(out_dir) / "points.png", image)
        return [*plain(self, samples, out_dir), Path(out_dir) / "points.png"]

    monkeypatch.setattr(ToyAdapter, "export", export)


def test_three_steps_write_events_text_log_and_a_step_zero_row(tmp_path, monkeypatch):
    with_a_picture(monkeypatch)
    make_trainer(tmp_path, "train.max_steps=3", "train.sample_every=2", "train.sample_num=8",
                 "train.sample_steps=2").fit()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["data_prep_s"] >= 0 and "loss" not in rows[0]
    assert rows[0]["parameters"] > 0 and rows[0]["batch_size"] == 16

    acc = read_events(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    for key in ("loss", "rec", "flow", "lr", "grad_norm", "elapsed_s", "data_prep_s"):
        assert f"train/{key}" in tags, (key, tags)
    assert "sample/toy/validity" in tags and "sample/wall_s" in tags
    assert [e.step for e in acc.Scalars("train/data_prep_s")] == [0]
    # every metrics.jsonl number, and only those, at its step (float32 in the event file)
    for key in ("loss", "grad_norm"):
        want = [(r["step"], r[key]) for r in rows if key in r]
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3]
        assert np.allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    want = [(r["step"], r["sample/toy/validity"]) for r in rows if "sample/toy/validity" in r]
    assert [(e.step, e.value) for e in acc.Scalars("sample/toy/validity")] == want and len(want) == 2

    images = acc.Images("sample/points")
    assert [e.step for e in images] == [2, 3] and (images[0].width, images[0].height) == (30, 20)

    text = (tmp_path / "train.log").read_text().splitlines()
    assert text == [format_row(r) for r in rows]
    assert text[1].startswith("step        1  joint") and f"loss {rows[1]['loss']:.6g}" in text[1]


def test_tensorboard_off_writes_no_events_but_the_text_log(tmp_path):
    make_trainer(tmp_path, "train.max_steps=2", "train.tensorboard=false").fit()
    assert not (tmp_path / "tb").exists()
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len((tmp_path / "train.log").read_text().splitlines()) == len(rows) == 3  # steps 0, 1, 2


def test_resume_keeps_one_row_per_step_in_every_sink(tmp_path):
    make_trainer(tmp_path, "train.max_steps=8").fit(stop_at=4)  # killed after the step-4 checkpoint
    make_trainer(tmp_path, "train.max_steps=8").fit(resume=True)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(9))
    assert (tmp_path / "train.log").read_text().splitlines() == [format_row(r) for r in rows]
    assert [e.step for e in read_events(tmp_path / "tb").Scalars("train/loss")] == list(range(1, 9))


def test_scalars_tags_and_leaves_out_words():
    row = {"step": 5, "phase": "joint", "loss": 0.5, "ok": True, "sample/valid": 90.0, "batch_size": 16}
    assert scalars(row) == {"train/loss": 0.5, "sample/valid": 90.0, "train/batch_size": 16.0}
    assert format_row(row) == "step        5  joint  loss 0.5  ok True  sample/valid 90  batch_size 16"
