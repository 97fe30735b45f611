"""`unite-sci config`: the resolved run config, every key, each layer winning in order; one-line refusals."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from unite_sci.cli import main
from unite_sci.config import RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def printed(capsys, *argv: str) -> dict:
    assert main(["config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def schema_keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of every leaf field of a dataclass schema, nested sections walked."""
    keys = set()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys |= schema_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def leaves(node: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in node.items():
        out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_every_key_and_the_layers_in_order(capsys, tmp_path):
    shipped = yaml.safe_load((CONFIGS / "toy.yaml").read_text())
    cfg = printed(capsys, "--modality", "toy", "flow.flow_batches=3")
    run_keys = {k for k in schema_keys(RunConfig) if not k.startswith("data")}
    assert run_keys <= leaves(cfg)                                   # every schema key printed, data aside
    assert cfg["flow"]["flow_batches"] == 3                           # the override
    assert cfg["model"]["latent_dim"] == shipped["model"]["latent_dim"] != RunConfig().model.latent_dim  # YAML
    assert cfg["flow"]["shift"] == RunConfig().flow.shift             # schema default where nothing says else
    assert cfg["out"] == "runs/toy"                                   # as `train` without --out
    # --config sits between the modality's YAML and the overrides
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  latent_dim: 7\nflow:\n  flow_batches: 2\n")
    cfg = printed(capsys, "--modality", "toy", "--config", str(extra), "flow.flow_batches=5")
    assert (cfg["model"]["latent_dim"], cfg["flow"]["flow_batches"]) == (7, 5)


def test_qm9_prints_its_data_section(capsys):
    shipped = yaml.safe_load((CONFIGS / "qm9.yaml").read_text())
    cfg = printed(capsys, "--modality", "qm9", "train.threads=1")
    assert cfg["flow"]["flow_batches"] == shipped["flow"]["flow_batches"]
    assert cfg["train"]["threads"] == 1
    assert cfg["data"]["coord_weight"] == shipped["data"]["coord_weight"] and "data_dir" in cfg["data"]


@pytest.mark.parametrize("argv, words", [
    (["--modality", "nosuch"], ["unknown modality 'nosuch'", "toy"]),
    (["--modality", "toy", "flow.nosuch=1"], ["flow.nosuch", "flow_batches"]),
    (["--modality", "toy", "flow.flow_batches=abc"], ["flow.flow_batches"]),
    (["--modality", "toy", "--config", "/no/such.yaml"], ["/no/such.yaml"]),
])
def test_mistakes_are_one_line(capsys, argv, words):
    assert main(["config", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert all(w in captured.err for w in words)
