"""The conformance test every adapter's tests reuse.

    class TestMyAdapter(AdapterConformance):
        modality = "mymod"
        data_overrides = ["data.num_train=64"]     # keep the data small

pytest collects the inherited ``test_*`` methods. They check the adapter against the Protocol and run
it through the core: a training step with gradients reaching its modules, sampling, export, reading
back, evaluation and the reconstruction path. The checks compare values, not only shapes and keys:

- ``state_dict`` -> ``load_state_dict`` of a fresh adapter gives back every value, also values changed
  before loading (a ``load_state_dict`` that does nothing fails), and survives ``torch.load(weights_only=True)``;
- ``export`` -> ``load_samples`` gives back the samples' arrays and numbers exactly;
- ``evaluate_reconstruction(inputs, inputs)``, the score of a perfect reconstruction, differs from the score of
  an untrained model's reconstructions in at least one number (a metric blind to errors fails). A test class
  that declares ``perfect_reconstruction`` (e.g. ``{"toy/rmse": 0.0}``) gets those exact values checked as
  well; ``{}`` states that no key has a known perfect value.

The smallest test of a new adapter is the documented one (docs/own-domain.md), ``modality`` alone.
"""
from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapter import Batch, get_adapter_class, missing_members
from .config import RunConfig, build_config
from .config import SampleConfig
from .generation import generate
from .unite import Unite

TINY = ["model.preset=tiny", "model.depth=2", "model.width=64", "model.heads=2", "model.dec_depth=1",
        "model.dec_width=64", "model.dec_heads=2"]


class AdapterConformance:
    modality: str = ""
    data_overrides: list[str] = []
    batch_size: int = 4
    perfect_reconstruction: dict[str, float] | None = None  # metric -> its value for a perfect reconstruction

    # ------------------------------------------------------------------ helpers
    def config(self) -> RunConfig:
        cls = get_adapter_class(self.modality)
        return build_config(self.modality, cls.config_class, [], TINY + list(self.data_overrides))

    def setup(self) -> tuple[Any, RunConfig, Batch]:
        if not hasattr(type(self), "_cache"):
            cfg = self.config()
            adapter = get_adapter_class(self.modality)(cfg.data)
            splits = adapter.build_splits()
            train = splits["train"]
            batch = adapter.collate([train[i] for i in range(self.batch_size)])
            type(self)._cache = (adapter, cfg, batch, splits)
        return type(self)._cache[:3]

    # ------------------------------------------------------------------ checks
    def test_protocol_members(self) -> None:
        adapter, _, _ = self.setup()
        assert not missing_members(adapter), f"missing members: {missing_members(adapter)}"
        assert adapter.name == self.modality

    def test_splits(self) -> None:
        self.setup()
        splits = type(self)._cache[3]
        assert {"train", "val", "test"} <= set(splits)
        assert all(len(splits[k]) > 0 for k in ("train", "val", "test"))

    def test_batch(self) -> None:
        adapter, _, batch = self.setup()
        assert batch.cond.shape == (self.batch_size,) and batch.cond.dtype == torch.long
        if adapter.layout.per_element:
            assert batch.mask is not None and batch.mask.shape[0] == self.batch_size
            assert batch.mask.any(1).all(), "every sample needs at least one element"
        augmented = adapter.augment(batch, torch.Generator().manual_seed(0))
        assert set(augmented.data) == set(batch.data)

    def test_training_step_reaches_adapter_modules(self) -> None:
        adapter, cfg, batch = self.setup()
        torch.manual_seed(0)
        model = Unite(adapter, cfg)
        loss, logs = model(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert {"rec", "flow", "loss"} <= set(logs)
        loss.backward()
        for part in (model.embedder, model.heads):
            grads = [p.grad for p in part.parameters() if p.requires_grad]
            assert grads and all(g is not None for g in grads), f"no gradient reaches {type(part).__name__}"

    def test_sample_export_load_evaluate(self, tmp_path: Path) -> None:
        adapter, cfg, _ = self.setup()
        model = Unite(adapter, cfg).eval()
        scfg = SampleConfig(solver="euler", steps=2, num=3, batch_size=2)
        samples, info = generate(model, adapter, scfg, progress=False)
        assert len(samples) == 3 and info["num_samples"] == 3
        files = adapter.export(samples, tmp_path / "out")
        assert files and all(Path(f).exists() for f in files)
        loaded = adapter.load_samples(tmp_path / "out")
        assert len(loaded) == 3
        for i, (a, b) in enumerate(zip(samples, loaded)):
            assert_same_values(a, b, f"sample {i} after export and load_samples", unset_ok=True)
        metrics = adapter.evaluate(loaded, str(tmp_path / "per_sample.csv"))
        assert metrics.get("num_samples") == 3
        assert (tmp_path / "per_sample.csv").exists()
        quick = adapter.quick_metrics(samples)  # what the trainer logs every train.sample_every steps
        assert isinstance(quick, dict) and all(isinstance(v, float) for v in quick.values()), quick

    def test_reconstruction_path(self) -> None:
        adapter, cfg, batch = self.setup()
        model = Unite(adapter, cfg).eval()
        with torch.no_grad():
            rec = adapter.to_domain(model.decode(model.encode(batch), batch.mask), batch.mask)
        inputs = adapter.batch_to_domain(batch)
        assert len(rec) == len(inputs) == self.batch_size
        perfect = adapter.evaluate_reconstruction(inputs, inputs)
        assert isinstance(perfect, dict)
        if not perfect:
            return
        untrained = adapter.evaluate_reconstruction(inputs, rec)
        numbers = [k for k, v in perfect.items() if _is_number(v) and _is_number(untrained.get(k))]
        assert any(not math.isclose(float(perfect[k]), float(untrained[k]), rel_tol=1e-9, abs_tol=1e-12)
                   for k in numbers), (f"{type(self).__name__}: evaluate_reconstruction scores a perfect "
                                       f"reconstruction as it scores an untrained model's: {perfect}")
        for key, value in (self.perfect_reconstruction or {}).items():
            assert key in perfect, f"{key} not in {sorted(perfect)}"
            assert math.isclose(float(perfect[key]), value, rel_tol=1e-6, abs_tol=1e-6), (key, perfect[key], value)

    def test_state_roundtrip(self) -> None:
        adapter, cfg, _ = self.setup()
        state = adapter.state_dict()
        buffer = io.BytesIO()
        torch.save(state, buffer)  # checkpoints hold the state and load it with weights_only=True
        buffer.seek(0)
        assert_same_values(state, torch.load(buffer, weights_only=True), "state after torch.save / torch.load")
        other = get_adapter_class(self.modality)(cfg.data)
        other.load_state_dict(state)
        assert_same_values(state, other.state_dict(), "state after load_state_dict")
        changed, count = perturbed(state)
        if count:  # values another training set would give: they must reach the fresh adapter too
            other = get_adapter_class(self.modality)(cfg.data)
            other.load_state_dict(changed)
            assert_same_values(changed, other.state_dict(), "changed state after load_state_dict")


# ---------------------------------------------------------------------- value comparison
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(float(v))


def _leaves(x: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every array, tensor and number inside x; strings and None are labels, not values."""
    if isinstance(x, (str, bytes)) or x is None:
        return []
    if isinstance(x, (torch.Tensor, np.ndarray, bool, int, float, np.number, np.bool_)):
        return [(path, x)]
    if isinstance(x, dict):
        return [leaf for k in sorted(x, key=str) for leaf in _leaves(x[k], f"{path}.{k}")]
    if dataclasses.is_dataclass(x):
        return [leaf for f in dataclasses.fields(x) for leaf in _leaves(getattr(x, f.name), f"{path}.{f.name}")]
    if hasattr(x, "_fields"):  # NamedTuple
        return [leaf for k in x._fields for leaf in _leaves(getattr(x, k), f"{path}.{k}")]
    if isinstance(x, (list, tuple)):
        return [leaf for i, v in enumerate(x) for leaf in _leaves(v, f"{path}[{i}]")]
    raise TypeError(f"cannot compare a {type(x).__name__} at {path or 'top level'}")


def _array(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def assert_same_values(a: Any, b: Any, what: str, unset_ok: bool = False) -> None:
    """Every array and number of a equals b's, exactly (NaN equals NaN), at the same place.

    unset_ok: b may hold values where a has None (a generated image's label, set when it is exported)."""
    la, lb = _leaves(a), dict(_leaves(b))
    paths = [p for p, _ in la]
    assert la or not unset_ok, f"{what}: the sample holds no arrays or numbers to compare"
    assert (set(paths) <= set(lb)) if unset_ok else paths == list(lb), f"{what}: fields {paths} != {list(lb)}"
    for path, x in la:
        y = lb[path]
        x, y = _array(x), _array(y)
        assert x.shape == y.shape, f"{what}: {path} has shape {y.shape}, expected {x.shape}"
        assert np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"), f"{what}: {path} differs: {y} != {x}"


def perturbed(state: Any) -> tuple[Any, int]:
    """A copy of a state with every float value x -> 1.5 x + 0.25 and every integer n -> n + 1 (positive
    scales stay positive); returns it and how many values changed."""
    if isinstance(state, dict):
        out = {k: perturbed(v) for k, v in state.items()}
        return {k: v for k, (v, _) in out.items()}, sum(n for _, n in out.values())
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):
        out = [perturbed(v) for v in state]
        return type(state)(v for v, _ in out), sum(n for _, n in out)
    if isinstance(state, torch.Tensor) and state.numel():
        if state.dtype == torch.bool:
            return ~state, 1
        return (state * 1.5 + 0.25 if state.is_floating_point() else state + 1), 1
    if isinstance(state, np.ndarray) and state.size and state.dtype.kind in "fiu":
        return (state * 1.5 + 0.25 if state.dtype.kind == "f" else state + 1).astype(state.dtype), 1
    if isinstance(state, float):
        return state * 1.5 + 0.25, 1
    if isinstance(state, int) and not isinstance(state, bool):
        return state + 1, 1
    return state, 0
