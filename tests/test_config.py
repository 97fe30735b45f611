"""Config errors name the key; YAML files and overrides merge over dataclass defaults."""
import pytest

from unite_sci.config import build_config, from_yaml, to_yaml
from unite_sci.errors import ConfigError
from unite_sci_modalities.toy import ToyConfig


def build(*over, files=()):
    return build_config("toy", ToyConfig, list(files), list(over))


def test_defaults_are_the_papers():
    cfg = build()
    assert cfg.flow.shift == 0.5 and cfg.flow.clamp == 0.05 and cfg.optim.grad_clip == 3.0
    assert cfg.optim.ema_decay == 0.9978 and cfg.decoder_noise.prob == 0.5 and cfg.decoder_noise.t_min == 0.7
    assert cfg.sample.cfg_interval == [0.1, 1.0] and cfg.flow.label_dropout == 0.1


@pytest.mark.parametrize("override,key", [
    ("model.nope=1", "model.nope"),
    ("train.batch_size=abc", "train.batch_size"),
    ("train.batch_size=0", "train.batch_size"),
    ("sample.solver=rk4", "sample.solver"),
    ("flow.label_dropout=1.5", "flow.label_dropout"),
    ("model.preset=huge", "model.preset"),
    ("data.num_train=x", "data.num_train"),
    ("bogus=1", "bogus"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        build(override)
    assert "\n" not in str(e.value)


def test_yaml_file_and_overrides_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  batch_size: 8\n  seed: 4\n")
    cfg = build("train.seed=5", files=[f])
    assert cfg.train.batch_size == 8 and cfg.train.seed == 5


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build(files=[tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError):
        build(files=[bad])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match="batchsize"):
        build(files=[unknown])


def test_two_stage_needs_separate_weights():
    with pytest.raises(ConfigError, match="shared_weights"):
        build("train.mode=two_stage")
    assert build("train.mode=two_stage", "model.shared_weights=false").train.mode == "two_stage"


def test_saved_yaml_round_trip():
    cfg = build("train.seed=7", "data.max_points=9")
    again = from_yaml(to_yaml(cfg), ToyConfig)
    assert again == cfg


def test_choices_are_plain_words_in_code_and_in_saved_yaml():
    cfg = build("sample.solver=euler", "train.precision=bf16")
    assert cfg.sample.solver == "euler" and f"{cfg.train.precision}" == "bf16" and repr(cfg.sample.solver) == "'euler'"
    assert "solver: euler" in to_yaml(cfg) and "precision: bf16" in to_yaml(cfg)


def test_rules_hold_for_configs_built_in_python_too():
    import dataclasses

    from unite_sci.config import validate

    cfg = build()
    for section, change, key in [("sample", {"solver": "rk4"}, "sample.solver"),
                                 ("optim", {"ema_decay": 0.0}, "optim.ema_decay"),
                                 ("data", {"min_points": 9, "max_points": 5}, "data.min_points")]:
        bad = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **change)})
        with pytest.raises(ConfigError) as e:
            validate(bad)
        assert str(e.value).startswith(f"config key '{key}': ")


def test_a_choice_value_must_be_its_name():
    from unite_sci.schema import Choice

    with pytest.raises(TypeError, match="must be its name"):
        class Bad(Choice):  # omegaconf would read the YAML word "b" into nothing
            a = "b"


def test_range_wording():
    from unite_sci.schema import Range

    assert str(Range(0, None, open_lo=True)) == "be > 0" and str(Range(0, 1, open_hi=True)) == "lie in [0, 1)"
