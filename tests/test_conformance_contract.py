"""The shared conformance contract itself: its reconstruction check fails a metric blind to errors, and passes
the minimal documented class (``modality`` alone) for the toy adapter."""
import pytest

from unite_sci import testing
from unite_sci_modalities.toy import ToyAdapter


class BlindToy(ToyAdapter):
    def evaluate_reconstruction(self, inputs, recons):
        return {"toy/rmse": 0.0}  # the same score whatever the reconstruction


def _check(monkeypatch, adapter_class, **attrs):
    monkeypatch.setattr(testing, "get_adapter_class", lambda name: adapter_class)
    case = type("Case", (testing.AdapterConformance,), {"modality": "toy", "data_overrides": [
        "data.num_train=16", "data.num_test=8"], **attrs})()
    case.test_reconstruction_path()


def test_an_undeclared_perfect_score_must_differ_from_an_untrained_models(monkeypatch):
    _check(monkeypatch, ToyAdapter)
    with pytest.raises(AssertionError, match="scores a perfect reconstruction as it scores an untrained model's"):
        _check(monkeypatch, BlindToy)


def test_a_declared_perfect_score_is_checked_exactly(monkeypatch):
    _check(monkeypatch, ToyAdapter, perfect_reconstruction={"toy/rmse": 0.0})
    with pytest.raises(AssertionError):
        _check(monkeypatch, ToyAdapter, perfect_reconstruction={"toy/rmse": 1.0})
