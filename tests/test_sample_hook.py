"""Sample quality during training: ``sample/*`` rows, the two-panel loss.png, and a hook that changes
no trained weight (with or without a resume)."""
import json
import random

import numpy as np
import pytest
import torch

from test_trainer import flat_state, make_trainer
from unite_sci.adapter import AdapterBase, has_quick_metrics
from unite_sci.config import build_config
from unite_sci.errors import ConfigError
from unite_sci.plots import plot_losses
from unite_sci.testing import TINY
from unite_sci_modalities.toy import ToyAdapter, ToyConfig

HOOK = ["train.sample_every=2", "train.sample_num=20", "train.sample_steps=3"]


def rows(path):
    return [json.loads(r) for r in (path / "metrics.jsonl").read_text().splitlines()]


def test_hook_writes_sample_rows_and_a_second_panel(tmp_path):
    tr = make_trainer(tmp_path, *HOOK, "train.max_steps=5")
    tr.fit()
    sample_rows = [r for r in rows(tmp_path) if "sample/wall_s" in r]
    assert [r["step"] for r in sample_rows] == [2, 4, 5]  # every 2 steps and at the end
    for r in sample_rows:
        assert 0.0 <= r["sample/toy/validity"] <= 100.0 and 0.0 <= r["sample/toy/circle_share"] <= 100.0
    assert all("loss" in r for r in rows(tmp_path) if "sample/wall_s" not in r and r["step"] > 0)
    assert (tmp_path / "loss.png").exists()
    assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "again.png") == 2
    plain = tmp_path / "plain"
    make_trainer(plain, "train.max_steps=2").fit()
    assert plot_losses(plain / "metrics.jsonl", plain / "again.png") == 1


def fit_seeded(out, *extra):
    """Fit from fixed Python and NumPy states (the trainer seeds torch); the trainer and the states after."""
    random.seed(1)
    np.random.seed(1)
    tr = make_trainer(out, *extra)
    tr.fit()
    return tr, (torch.get_rng_state(), random.random(), np.random.random())


def test_hook_changes_no_weight_and_no_random_stream(tmp_path, monkeypatch):
    off, rng_off = fit_seeded(tmp_path / "off")
    scored = ToyAdapter.quick_metrics

    def greedy(self, samples):  # a metric that draws from every global generator must not matter either
        torch.rand(1), random.random(), np.random.random()
        return scored(self, samples)

    monkeypatch.setattr(ToyAdapter, "quick_metrics", greedy)
    on, rng_on = fit_seeded(tmp_path / "on", *HOOK)
    a, b = flat_state(off), flat_state(on)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert torch.equal(rng_off[0], rng_on[0]) and rng_off[1:] == rng_on[1:]
    assert on.model.training
    losses = lambda rs: [(r["step"], r["loss"]) for r in rs if "loss" in r]  # noqa: E731
    assert losses(rows(tmp_path / "off")) == losses(rows(tmp_path / "on"))
    assert sum("sample/wall_s" in r for r in rows(tmp_path / "on")) == 4


def test_resumed_run_with_the_hook_equals_a_straight_run_without(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.fit()
    make_trainer(tmp_path / "b", *HOOK).fit(stop_at=4)  # killed after the step-4 checkpoint
    resumed = make_trainer(tmp_path / "b", *HOOK)
    resumed.fit(resume=True)
    a, b = flat_state(straight), flat_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in rows(tmp_path / "b") if "sample/wall_s" in r] == [2, 4, 6, 8]


def test_adapter_without_quick_metrics_draws_no_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(ToyAdapter, "quick_metrics", AdapterBase.quick_metrics)
    assert not has_quick_metrics(ToyAdapter(ToyConfig()))
    with pytest.warns(UserWarning, match="no quick_metrics"):
        tr = make_trainer(tmp_path, *HOOK)
    tr.fit()
    assert not any("sample/wall_s" in r for r in rows(tmp_path))


@pytest.mark.parametrize("key,value", [("train.sample_every", -1), ("train.sample_num", 0),
                                       ("train.sample_steps", -2)])
def test_sample_settings_are_checked(key, value):
    with pytest.raises(ConfigError, match=key):
        build_config("toy", ToyConfig, [], TINY + [f"{key}={value}"])


def test_qm9_quick_metrics_on_real_molecules():
    from unite_sci_modalities.qm9.adapter import QM9Adapter, QM9Config

    cfg = build_config("qm9", QM9Config, [], ["data.num_train=8", "data.num_val=8", "data.num_test=8"])
    a = QM9Adapter(cfg.data)
    test = a.build_splits()["test"]
    molecules = a.batch_to_domain(a.collate([test[i] for i in range(8)]))
    m = a.quick_metrics(molecules)
    assert set(m) == {"connected_validity", "edm/atom_stability"}
    assert all(0.0 <= v <= 100.0 for v in m.values())
    assert m["edm/atom_stability"] > 90.0  # real molecules: EDM counts 99 % of QM9's atoms stable
    garbage = [(np.array([6, 6]), np.zeros((2, 3)))]  # two atoms on top of each other
    assert a.quick_metrics(garbage) == {"connected_validity": 0.0, "edm/atom_stability": 0.0}


class FakeClock:
    """The trainer's clock in seconds, moved only by the test: 1 s per training step, 10 s per sampling."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget_run(out, monkeypatch, *extra):
    """A 6-second budget run (train.budget_minutes=0.1) on the fake clock; its summary and metrics rows."""
    clock = FakeClock()
    scored = ToyAdapter.quick_metrics

    def slow_metrics(self, samples):
        clock.now += 10.0
        return scored(self, samples)

    monkeypatch.setattr(ToyAdapter, "quick_metrics", slow_metrics)
    tr = make_trainer(out, "train.max_steps=0", "train.budget_minutes=0.1", *extra)
    tr.clock, step = clock, tr.train_step

    def one_second_step(batch):
        clock.now += 1.0
        return step(batch)

    tr.train_step = one_second_step
    return tr.fit(), rows(out), tr.data_prep_s


def test_in_run_sampling_does_not_count_toward_the_budget(tmp_path, monkeypatch):
    plain, _, _ = budget_run(tmp_path / "plain", monkeypatch)
    hooked, hooked_rows, prep = budget_run(tmp_path / "hook", monkeypatch, *HOOK)
    assert plain["steps"] == hooked["steps"] == 6  # 6 s of 1-s steps, with or without 3 x 10 s of sampling
    assert plain["time_split_s"] == {"training": 6.0, "in_run_sampling": 0.0, "data_prep": plain["data_prep_s"]}
    assert hooked["time_split_s"] == {"training": 6.0, "in_run_sampling": 30.0, "data_prep": prep}
    assert hooked["sample_wall_s"] == 30.0 and hooked["elapsed_s"] == 6.0
    sampled = [(r["step"], r["elapsed_s"], r["sample/wall_s"], r["sample_wall_s"])
               for r in hooked_rows if "sample/wall_s" in r]
    assert sampled == [(2, 2.0, 10.0, 10.0), (4, 4.0, 10.0, 20.0), (6, 6.0, 10.0, 30.0)]
