"""`unite-sci card NAME --physics RESULTS.json`: a shipped model's card gains the physical checks of its own
samples, with the three commands; samples drawn by another model, or results without physics, are refused."""
import json

import pytest

from unite_sci.errors import UserError
from unite_sci.physics import PHYSICS_KEYS, RELAX_META, card_physics

SHA = "994af6ffb1414dcaebd791ac86f81e258823158cf00a5f66cb6cb8a749031de9"


def _folders(tmp_path, drawn_by=SHA[:16]):
    drawn, relaxed = tmp_path / "s", tmp_path / "r"
    drawn.mkdir()
    relaxed.mkdir()
    (drawn / "samples_meta.json").write_text(json.dumps({"checkpoint_sha256": drawn_by, "num_samples": 4, "seed": 0,
                                                          "temperature": 1.0, "command": "unite-sci sample --model m"}))
    (relaxed / RELAX_META).write_text(json.dumps({"samples": str(drawn), "tool": "CHGNet", "converged": 3,
                                                  "settings": {"fmax": 0.1}, "unrelated": 1}))
    results = {"samples_path": str(relaxed), "num_samples": 4, "x/stable_pct": 25.0, "x/other": 1.0,
               "x/protocol": "CHGNet, MP-20 hull", PHYSICS_KEYS: ["x/protocol", "x/stable_pct"],
               "command": "unite-sci evaluate --samples r data.physics=true"}
    return results


def test_card_section_has_the_physics_numbers_and_the_three_commands(tmp_path):
    section = card_physics(_folders(tmp_path), SHA, "m")
    assert section["metrics"] == {"x/protocol": "CHGNet, MP-20 hull", "x/stable_pct": 25.0}  # not x/other
    assert section["commands"]["sample"] == "unite-sci sample --model m"
    assert section["commands"]["relax"].startswith("unite-sci relax --samples")  # rebuilt: none recorded
    assert section["commands"]["evaluate"].endswith("data.physics=true")
    assert section["relaxation"] == {"tool": "CHGNet", "settings": {"fmax": 0.1}, "converged": 3}


def test_samples_of_another_model_or_results_without_physics_are_refused(tmp_path):
    results = _folders(tmp_path, drawn_by="0123456789abcdef")
    with pytest.raises(UserError, match="drawn by checkpoint sha256 0123456789abcdef"):
        card_physics(results, SHA, "m")
    with pytest.raises(UserError, match="no physical checks"):
        card_physics({k: v for k, v in results.items() if k != PHYSICS_KEYS}, SHA, "m")


def test_card_command_errors_are_one_line(tmp_path, capsys):
    from unite_sci.cli import main

    (tmp_path / "bad.json").write_text("{not json")
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        assert main(["card", "qm9", "--physics", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "cannot read" in err[0], err
