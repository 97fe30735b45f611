"""Headline rows sample at the configured temperature; lowered ones are named rows beside it (#24 item 6)."""
from types import SimpleNamespace

import pytest

from unite_sci.config import build_config
from unite_sci.protocol import beside_temperatures, run_protocol
from unite_sci_modalities.toy import ToyConfig


@pytest.mark.parametrize("headline, beside, expected", [
    (1.0, [], []), (1.0, [0.5], [0.5]), (0.5, [], [1.0]), (0.5, [0.5, 0.7, 0.7, 1.0], [1.0, 0.7])])
def test_beside_temperatures(headline, beside, expected):
    assert beside_temperatures(SimpleNamespace(temperature=headline, beside_temperatures=beside)) == expected


def test_qm9_headline_is_the_papers_temperature_1_with_0_5_beside():
    from unite_sci.engine import load_config

    cfg = load_config("qm9")
    assert cfg.sample.temperature == 1.0 and cfg.sample.beside_temperatures == [0.5]


def test_beside_temperature_rows_are_scored_from_their_own_samples(tmp_path):
    from test_trainer import make_trainer

    ckpt = str(make_trainer(tmp_path / "run", "train.max_steps=10").fit()["checkpoint"])
    res = run_protocol("toy", tmp_path / "p", None, 6, ckpt, ["sample.beside_temperatures=[0.25]"], recon_num=4)
    assert res["sampling"]["temperature"] == 1.0 and "generation_temperature_1" not in res
    assert set(res["generation_temperature_0.25"]) == set(res["generation"])
    lowered = (tmp_path / "p" / "per_sample_temperature_0.25.csv").read_text()
    assert lowered != (tmp_path / "p" / "per_sample.csv").read_text()  # its own samples, scored one by one
    assert build_config("toy", ToyConfig).sample.beside_temperatures == []
