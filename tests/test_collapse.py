"""The core collapse checks (unite_sci/collapse.py) and their use in `diagnose` (unite_sci/diagnose.py):
a collapsed sample set warns and a healthy one does not; a reconstruction loss that stays flat while the flow
loss falls warns, one that fell early and then levelled off does not."""
from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from unite_sci import collapse
from unite_sci.diagnose import health_warnings, markdown, training_rows


def _real(n: int = 200, d: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def test_a_healthy_sample_set_spreads_like_real_data_and_has_no_twins():
    m = collapse.sample_spread(_real(seed=1), _real(seed=2))
    assert m["spread_ratio"] == pytest.approx(1.0, abs=0.05) and m["duplicate_share"] == 0.0
    assert collapse.collapse_warning(m) is None


def test_identical_samples_collapse_on_both_signals():
    one = np.repeat(_real(1, seed=3), 200, axis=0) + 1e-4 * _real(seed=4)  # (200, 64): one item, jittered
    m = collapse.sample_spread(one, _real())
    assert m["spread_ratio"] < 0.01 and m["duplicate_share"] == 1.0
    line = collapse.collapse_warning({f"x/{k}": v for k, v in m.items()}, "200 samples")
    assert line.startswith("200 samples collapsed:") and "twin" in line and "\n" not in line


def test_one_item_per_class_is_caught_by_twins_although_the_spread_survives():
    # ten modes, twenty copies each: the spread between classes stays, every item has a twin
    modes = _real(10, seed=5)
    per_class = np.repeat(modes, 20, axis=0) + 1e-3 * _real(seed=6)
    m = collapse.sample_spread(per_class, _real())
    assert m["spread_ratio"] > collapse.SPREAD_RATIO_MIN and m["duplicate_share"] == 1.0
    assert "twin" in collapse.collapse_warning(m)


def test_spread_needs_two_items_and_compares_equal_counts():
    assert collapse.sample_spread(_real(1), _real()) == {}
    # 50 samples against 200 real items: only the first 50 real ones count (same density)
    assert collapse.sample_spread(_real(50, seed=7), _real())["duplicate_share"] == 0.0


def _rows(flow: np.ndarray, rec: np.ndarray) -> list[dict]:
    return [{"step": i, "flow": float(f), "rec": float(r)} for i, (f, r) in enumerate(zip(flow, rec))]


def test_flat_reconstruction_while_the_flow_loss_falls_warns():
    steps = np.arange(40)
    line = collapse.reconstruction_stalled(_rows(np.exp(-steps / 8), np.full(40, 0.3)))
    assert line is not None and line.startswith("reconstruction stalled") and "\n" not in line


@pytest.mark.parametrize("rec", [np.exp(-np.arange(40) / 8),                          # both fall
                                 np.r_[np.linspace(0.3, 0.05, 5), np.full(35, 0.05)]])  # fell early, then flat
def test_a_reconstruction_that_improved_does_not_warn(rec):
    assert collapse.reconstruction_stalled(_rows(np.exp(-np.arange(40) / 8), rec)) is None


def test_stall_check_needs_enough_rows_and_a_falling_flow_loss():
    assert collapse.reconstruction_stalled(_rows(np.exp(-np.arange(5)), np.full(5, 0.3))) is None
    assert collapse.reconstruction_stalled(_rows(np.full(40, 0.5), np.full(40, 0.3))) is None
    assert collapse.reconstruction_stalled([{"step": 1, "sample/x": 1.0}] * 40) is None  # sample rows only


def test_diagnose_reports_collapse_and_a_stalled_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    steps = np.arange(40)
    lines = [json.dumps(r) for r in _rows(np.exp(-steps / 8), np.full(40, 0.3))] + ['{"cut sho']
    (run / "metrics.jsonl").write_text("\n".join(lines))
    logged = training_rows(run / "checkpoints" / "last.pt")
    assert len(logged) == 40  # the cut line is skipped
    rows = {"real": {"m/spread_ratio": 1.0, "m/duplicate_share": 0.0},
            "decoder/sigma=0": {"m/spread_ratio": 0.01, "m/duplicate_share": 1.0},  # not a generated row
            "generated": {"m/spread_ratio": 0.01, "m/duplicate_share": 1.0}}
    warns = health_warnings(rows, logged)
    assert len(warns) == 2 and warns[0].startswith("generated samples collapsed") and "stalled" in warns[1]
    healthy = {"generated": {"m/spread_ratio": 0.9, "m/duplicate_share": 0.0}}
    assert health_warnings(healthy, []) == [] and training_rows(tmp_path / "x.pt") == []
    report = {"rows": rows, "latent": {"latent_rms": 1.0}, "num_items": 2, "seed": 0, "ode_steps": 1,
              "warnings": warns}
    assert markdown(report).count("**warning**") == 2


def test_diagnose_and_analyze_warn_about_a_run_whose_reconstruction_stalled(tmp_path, capsys):
    from test_trainer import make_trainer

    from unite_sci.analyze import run_analyze
    from unite_sci.diagnose import run_diagnose

    ckpt = make_trainer(tmp_path / "run", "train.max_steps=12").fit()["checkpoint"]
    log = tmp_path / "run" / "metrics.jsonl"
    assert training_rows(ckpt)  # the trainer's own log is found
    steps = np.arange(40)
    log.write_text("\n".join(json.dumps(r) for r in _rows(np.exp(-steps / 8), np.full(40, 0.3))))
    capsys.readouterr()
    analyzed = run_analyze(ckpt, out=None, num=4, progress=False)
    diagnosed = run_diagnose(ckpt, out=None, num=4, ode_steps=1, progress=False)
    for report in (analyzed, diagnosed):
        assert [w for w in report["warnings"] if w.startswith("reconstruction stalled")]
    assert capsys.readouterr().err.count("warning: reconstruction stalled") == 2
    log.unlink()
    assert run_analyze(ckpt, out=None, num=4, progress=False)["warnings"] == []


def test_the_end_of_a_run_warns_when_its_log_shows_a_stalled_reconstruction(tmp_path, capsys):
    import json

    from unite_sci.collapse import stalled_warning

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "flow": 1.0 / (1 + i), "rec": 0.5} for i in range(60)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert stalled_warning(log) and "reconstruction stalled" in capsys.readouterr().err
    log.write_text("\n".join(json.dumps({**r, "rec": 0.5 / (1 + r["step"])}) for r in rows) + "\n")
    assert stalled_warning(log) is None and capsys.readouterr().err == ""


def test_a_denoiser_that_ignores_its_input_is_named():
    # the one-shot errors measured on MP-20's two 15-minute seeds (diagnose's keys)
    def latent(errors: dict[float, float]) -> dict[str, float]:
        out = {f"one_shot/t={t:g}/mse_x1_hat": e for t, e in errors.items()}
        return {**out, **{f"one_shot/t={t:g}/mse_x_t": (1 - t) ** 2 * 2 for t in errors}}

    healthy = latent({0.3: 0.677, 0.6: 0.155, 0.9: 0.0092, 0.99: 0.0030})
    blind = latent({0.3: 1.604, 0.6: 1.604, 0.9: 1.604, 0.99: 1.604})
    assert collapse.denoiser_blind(healthy) is None and collapse.denoiser_blind({}) is None
    line = collapse.denoiser_blind(blind)
    assert line.startswith("the denoiser does not read its input") and "model.shared_weights=false" in line
    assert health_warnings({}, [], blind) == [line]


def test_diagnose_finds_a_real_denoiser_made_blind(tmp_path):
    from test_trainer import make_trainer

    from unite_sci.diagnose import latent_diagnostics
    from unite_sci.engine import load_model

    # 40 steps: its error falls from 0.34 at t = 0.3 to 0.10 at t = 0.98 (measured), far from blind
    ckpt = make_trainer(tmp_path / "run", "train.max_steps=40", "train.ckpt_every=40", "optim.lr=0.003",
                        "model.shared_weights=false").fit()["checkpoint"]
    loaded = load_model(ckpt, "cpu")
    items = [loaded.adapter.build_splits()["test"][i] for i in range(8)]
    seen = latent_diagnostics(loaded.model, loaded.adapter, items, ode_steps=1, progress=False)["latent"]
    with torch.no_grad():
        loaded.model.denoiser.x_embed.weight.zero_()  # x_t no longer reaches the network
    blind = latent_diagnostics(loaded.model, loaded.adapter, items, ode_steps=1, progress=False)["latent"]
    assert collapse.denoiser_blind(seen) is None and collapse.denoiser_blind(blind) is not None
