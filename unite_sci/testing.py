"""The conformance test every adapter's tests reuse.

    class TestMyAdapter(AdapterConformance):
        modality = "mymod"
        data_overrides = ["data.num_train=64"]     # keep the data small

pytest collects the inherited ``test_*`` methods. They check the adapter against the Protocol and run
it through the core: a training step with gradients reaching its modules, sampling, export, reading
back, evaluation and the reconstruction path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

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
        assert isinstance(adapter.evaluate_reconstruction(inputs, inputs), dict)

    def test_state_roundtrip(self) -> None:
        adapter, cfg, _ = self.setup()
        other = get_adapter_class(self.modality)(cfg.data)
        other.load_state_dict(adapter.state_dict())
        assert other.state_dict().keys() == adapter.state_dict().keys()
