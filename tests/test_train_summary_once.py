"""Under torchrun every process runs `unite-sci train`; the run summary is printed once, by rank 0."""
import json

import pytest

from unite_sci import cli, engine


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_the_run_summary_is_printed_by_rank_0_only(tmp_path, monkeypatch, capsys, rank, printed):
    monkeypatch.setattr(engine, "train", lambda cfg, **kw: {"checkpoint": "last.pt", "steps": 1})
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", "--modality", "toy", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert (json.loads(out) == {"checkpoint": "last.pt", "steps": 1}) if printed else out == ""
