"""Shipped models (issue #26): ``unite-sci ship``, ``--model NAME``, ``unite_sci.load(NAME)``, ``list``.

The checks of a shipped model run for every model in the package's shipped folder (``models/``) and for
``tests/data/shipped/toy-test``, a 20-step toy model shipped for these tests only (its card's ``recipe.note``
holds the command that trained it; docs/models.md the one that shipped it).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import unite_sci
from unite_sci import shipped as sh
from unite_sci.checkpoint import FORMAT, load_checkpoint
from unite_sci.cli import main
from unite_sci.engine import load_model
from unite_sci.errors import UserError
from unite_sci.files import file_hash

from test_trainer import make_trainer

FIXTURE = Path(__file__).parent / "data" / "shipped"
MODELS = sh.shipped_models([FIXTURE, *sh.entry_point_dirs().values()])  # the fixture first: its name wins
REAL = [n for n, p in MODELS.items() if p.parent != FIXTURE]


@pytest.fixture(autouse=True)
def fixture_models(monkeypatch):
    monkeypatch.setenv(sh.MODELS_ENV, str(FIXTURE))


def card(name: str) -> dict:
    return yaml.safe_load(sh.card_path(MODELS[name]).read_text())


def test_the_fixture_and_the_package_folder_are_searched():
    assert "toy-test" in MODELS and set(MODELS) == set(sh.shipped_models())


@pytest.mark.parametrize("name", list(MODELS))
def test_shipped_weights_load_with_weights_only_and_hold_no_training_state(name):
    state = torch.load(MODELS[name], map_location="cpu", weights_only=True)
    assert state["format"] == FORMAT and state["weights"] in ("ema", "raw")
    assert not set(sh.DROPPED) & set(state)  # no optimiser moments, EMA copy or RNG: half the file or more
    assert state["modality"] == card(name)["modality"] and state["step"] == card(name)["training"]["steps"]


@pytest.mark.parametrize("name", list(MODELS))
def test_hash_and_size_match_the_card(name):
    w = card(name)["weights"]
    assert file_hash(MODELS[name]) == w["sha256"] and MODELS[name].stat().st_size == w["size_bytes"]


@pytest.mark.parametrize("name", list(MODELS))
def test_twenty_samples_score_at_least_the_cards_floor(name):
    c = card(name)
    if not c.get("floor"):
        pytest.skip(f"{name} was shipped without --score: no floor")
    floor = c["floor"]
    assert floor["metrics"] and floor["metrics"] == {
        k: round(max(0.0, c["scores"]["generation"][k] - floor["margin"]), 2) for k in floor["metrics"]}
    m = unite_sci.load(name, overrides=floor["overrides"])
    samples = m.sample(floor["num_samples"], seed=0)
    quick = getattr(m.adapter, "quick_metrics", None)
    got = quick(samples) if quick else {}
    if not set(floor["metrics"]) <= set(got):
        got = m.adapter.evaluate(samples)
    for metric, least in floor["metrics"].items():
        assert got[metric] >= least, f"{name}: {metric} {got[metric]:.1f} < floor {least} (card {c['scores']})"


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "toy-test" else pytest.mark.slow)
                                  for n in MODELS if card(n).get("scores")])
def test_the_cards_numbers_are_reproduced_by_the_command_it_names(name, tmp_path, capsys):
    c = card(name)
    words = c["scores"]["command"].split()
    assert words[:2] == ["unite-sci", "benchmark"] and "--model" in words
    assert main(words[1:] + ["--out", str(tmp_path)]) == 0
    res = sh.find_results(tmp_path, MODELS[name])
    for metric in c["headline"]:  # same seed, same weights: the same samples, up to float reordering
        assert res["generation"][metric] == pytest.approx(c["scores"]["generation"][metric], abs=2.0)


def test_list_shows_each_model_with_its_card(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"model {name}:"))
        c = card(name)
        assert f"{c['training']['steps']} steps" in line and f"{c['weights']['size_mb']} MB" in line


def test_an_unknown_name_gets_one_line_with_the_shipped_ones(tmp_path, capsys):
    assert main(["sample", "--model", "no-such-model", "--num", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown model 'no-such-model'" in err and all(n in err for n in MODELS)
    with pytest.raises(UserError, match="shipped models: .*toy-test"):
        unite_sci.load("no-such-model")


def test_a_changed_weights_file_is_refused_at_load(tmp_path, monkeypatch, capsys):
    for f in FIXTURE.iterdir():
        shutil.copy(f, tmp_path / f.name)
    raw = bytearray((tmp_path / "toy-test.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "toy-test.pt").write_bytes(bytes(raw))
    monkeypatch.setenv(sh.MODELS_ENV, str(tmp_path))
    assert main(["sample", "--model", "toy-test", "--num", "2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sha256" in err and "toy-test" in err
    with pytest.raises(UserError, match="sha256"):
        unite_sci.load("toy-test")


def test_sample_and_encode_take_a_model_name(tmp_path, capsys):
    assert main(["sample", "--model", "toy-test", "--num", "3", "--out", str(tmp_path / "s"),
                 "--steps", "2"]) == 0
    meta = json.loads((tmp_path / "s" / "samples_meta.json").read_text())
    assert meta["checkpoint"] == str(MODELS["toy-test"]) and meta["ema"] is True
    assert meta["checkpoint_sha256"] == card("toy-test")["weights"]["sha256"][:16]
    assert main(["encode", "--model", "toy-test", "--inputs", str(tmp_path / "s"),
                 "--out", str(tmp_path / "z.npz")]) == 0
    with np.load(tmp_path / "z.npz") as z:
        assert z["pooled"].shape == (3, card("toy-test")["recipe"]["config"]["model"]["latent_dim"])


def test_model_and_checkpoint_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--model", "toy-test", "--checkpoint", "x.pt", "--num", "1", "--out", str(tmp_path)])
    assert e.value.code == 2


def test_ship_writes_the_ema_weights_and_a_card_that_matches_its_scores(tmp_path, monkeypatch, capsys):
    tr = make_trainer(tmp_path / "run", "train.max_steps=6")
    ckpt = str(tr.fit()["checkpoint"])
    models = tmp_path / "models"
    assert main(["ship", "--checkpoint", ckpt, "--name", "t1", "--out", str(models), "--score",
                 "--num-samples", "12", "--score-out", str(tmp_path / "score"), "--headline", "toy/validity",
                 "--floor-margin", "5", "sample.steps=2"]) == 0
    src, out = load_checkpoint(ckpt), load_checkpoint(models / "t1.pt")
    assert set(out["model"]) == set(src["model"])
    want = load_model(ckpt, use_ema=True).model.state_dict()  # the run's own loader, EMA on
    raw = load_model(ckpt, use_ema=False).model.state_dict()
    got = load_model(models / "t1.pt").model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert sum(not torch.equal(got[k], v) for k, v in raw.items()) > len(raw) // 2  # EMA, not the raw weights
    c = yaml.safe_load((models / "t1.card.yaml").read_text())
    assert c["weights"]["sha256"] == file_hash(models / "t1.pt")
    assert c["weights"]["size_bytes"] == (models / "t1.pt").stat().st_size
    assert c["training"]["steps"] == 6 and c["training"]["wall_s"] == round(src["elapsed"], 1)
    assert c["scores"]["command"] == "unite-sci benchmark toy --model t1 --num-samples 12 sample.steps=2"
    res = json.loads((tmp_path / "score" / "results.json").read_text())
    v = res["generation"]["toy/validity"]
    assert c["scores"]["generation"]["toy/validity"] == round(v, 4) and c["scores"]["num_samples"] == 12
    assert c["floor"]["metrics"] == {"toy/validity": round(max(0.0, v - 5), 2)}
    # by name, the shipped file samples exactly what the run's checkpoint samples with its EMA weights
    monkeypatch.setenv(sh.MODELS_ENV, str(models))
    by_name = unite_sci.load("t1", overrides=["sample.steps=3"]).sample(5, seed=1)
    by_run = unite_sci.load(ckpt, use_ema=True, overrides=["sample.steps=3"]).sample(5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(by_name, by_run))
    assert load_model("t1").ema is True
    assert load_model("t1").cfg.sample.steps == 2  # the sample.* words became its sampling defaults
    assert load_model(ckpt).cfg.sample.steps != 2


def test_ship_refuses_a_bad_name_and_a_shipped_file_as_its_source(tmp_path, capsys):
    assert main(["ship", "--checkpoint", str(MODELS["toy-test"]), "--name", "Bad Name", "--out", str(tmp_path)]) == 2
    assert "model name" in capsys.readouterr().err
    assert main(["ship", "--checkpoint", str(MODELS["toy-test"]), "--name", "again", "--out", str(tmp_path)]) == 2
    assert "no EMA weights" in capsys.readouterr().err


def test_demo_takes_quality_from_the_shipped_model_and_names_each_rows_source(tmp_path, monkeypatch, capsys):
    from unite_sci_benchmarks import demo, qm9 as bench

    calls = []

    def fake_run(out, budget_minutes=None, num_samples=None, checkpoint=None, overrides=()):
        calls.append((Path(out).name, budget_minutes, num_samples, checkpoint, list(overrides)))
        rows = [{"method": "UNITE single-stage (this run)", "edm/atom_stability": 50.0}]
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.json").write_text(json.dumps({"rows": rows}))

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(sh, "entry_point_dirs", dict)  # only the folders named here, whatever models/ holds
    models = tmp_path / "models"  # a shipped "qm9": the toy fixture's files under that name (read, never run)
    models.mkdir()
    shutil.copy(MODELS["toy-test"], models / "qm9.pt")
    sh.write_card({**card("toy-test"), "name": "qm9"}, models / "qm9.pt")
    monkeypatch.setenv(sh.MODELS_ENV, str(models))
    demo.run(str(tmp_path / "d"), budget_minutes=2, num_samples=40)
    assert calls == [("shipped", None, 40, str(models / "qm9.pt"), ["sanity=40"]),
                     ("trained", 2, 200, None, ["baseline=false", "sanity=0"])]
    text = (tmp_path / "d" / "report.md").read_text()
    assert "| Shipped 'qm9' (20 steps, " in text and "| This demo's 2-minute training run: UNITE" in text
    assert "| Card of shipped 'qm9': 50 samples" in text
    # without a shipped qm9: one line, and the training run gets all the samples and the real-data row
    monkeypatch.setenv(sh.MODELS_ENV, str(tmp_path / "none"))
    calls.clear()
    capsys.readouterr()
    demo.run(str(tmp_path / "e"), budget_minutes=2, num_samples=40)
    assert calls == [("trained", 2, 40, None, ["baseline=false", "sanity=40"])]
    said = capsys.readouterr().out.strip()
    assert "\n" not in said and said.startswith("no shipped model 'qm9'")
    assert "Shipped" not in (tmp_path / "e" / "report.md").read_text()


def test_shared_weights_are_counted_once_and_every_temperature_row_reaches_the_card(tmp_path):
    w = torch.zeros(3, 4)
    assert sh.count_parameters({"encoder.w": w, "denoiser.w": w, "b": torch.zeros(5), "i": torch.zeros(2).long()}) == 17
    tr = make_trainer(tmp_path / "run", "train.max_steps=4")
    weights = sh.ship(str(tr.fit()["checkpoint"]), "t2", tmp_path)
    gen = {"toy/validity": 40.0, "num_samples": 8}
    results = {"generation": gen, "generation_temperature_0.5": {"toy/validity": 55.0}, "sampling": {"temperature": 1.0}}
    card = sh.add_scores(weights, results, "unite-sci benchmark toy", ["toy/validity"])
    assert card["scores"]["generation_temperature_0.5"] == {"toy/validity": 55.0}
    assert card["floor"]["metrics"] == {"toy/validity": 20.0}  # the floor reads the headline temperature
    assert "cfg_scale" not in card["scores"] and "CFG" not in sh.summary("t2", weights)  # none reported
    guided = sh.add_scores(weights, {**results, "sampling": {"temperature": 1.0, "cfg_scale": 1.5}},
                           "unite-sci benchmark toy", ["toy/validity"])
    assert guided["scores"]["cfg_scale"] == 1.5  # the scale the numbers were measured at
    assert "CFG 1.5" in sh.summary("t2", weights)
    sh.add_scores(weights, {**results, "sampling": {"temperature": 1.0, "cfg_scale": 1.0}}, "b", ["toy/validity"])
    assert "CFG" not in sh.summary("t2", weights)  # scale 1 is no guidance: not shown
