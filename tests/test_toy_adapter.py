"""The toy adapter passes the shared conformance test; the registry finds it by name."""
import pytest

from unite_sci.adapter import Adapter, available, get_adapter_class
from unite_sci.errors import UserError
from unite_sci.testing import AdapterConformance


class TestToyConformance(AdapterConformance):
    modality = "toy"
    data_overrides = ["data.num_train=32", "data.num_test=8"]
    perfect_reconstruction = {"toy/rmse": 0.0}


def test_registry_lists_entry_points_and_rejects_unknown_names():
    assert {"toy", "qm9"} <= set(available())
    assert isinstance(get_adapter_class("toy")({}) if False else get_adapter_class("toy"), type)
    with pytest.raises(UserError, match="available: .*toy"):
        get_adapter_class("nope")


def test_toy_instance_is_an_adapter():
    from unite_sci_modalities.toy import ToyAdapter, ToyConfig

    assert isinstance(ToyAdapter(ToyConfig()), Adapter)
