"""A third-party adapter in its own package, outside this repository and installed nowhere: loaded with
``--adapter`` (CLI) or :func:`load_adapter` (Python), its shipped default YAML read, trained, sampled, and
held to the shared :class:`AdapterConformance` contract. Also the build-time checks on its modules."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from unite_sci import adapter as registry
from unite_sci.adapter import FnModule, load_adapter
from unite_sci.engine import generate, load_config, load_model, train
from unite_sci.errors import UserError
from unite_sci.testing import TINY, AdapterConformance
from unite_sci.unite import Unite

SPEC = "ringpkg.adapter:RingAdapter"
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
ENV.pop("UNITE_SCI_ADAPTERS", None)
SMALL = [*TINY, "train.progress=false", "train.batch_size=8"]

ADAPTER = '''
"""Points on a ring of radius data.radius: a third-party adapter, written as modalities/toy.py is."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unite_sci.adapter import AdapterBase, Batch, FnModule, register
from unite_sci.model import RegisterLayout


@dataclass
class RingConfig:
    num_train: int = 4096
    num_test: int = 256
    points: int = 6
    radius: float = 1.0


class RingEmbedder(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(2, width)

    def forward(self, data, mask):
        return self.lin(data["points"])  # (B, N, 2) -> (B, N, width)


@register("ring")
class RingAdapter(AdapterBase):
    config_class = RingConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.layout = RegisterLayout(per_element=False, count=cfg.points)

    def build_splits(self):
        rng = np.random.default_rng(0)
        def make(n):
            a = rng.uniform(0, 2 * np.pi, (n, self.cfg.points))
            return [self.cfg.radius * np.stack([np.cos(x), np.sin(x)], 1).astype(np.float32) for x in a]
        return {"train": make(self.cfg.num_train), "val": make(self.cfg.num_test), "test": make(self.cfg.num_test)}

    def collate(self, items):
        pts = torch.from_numpy(np.stack(items))
        return Batch({"points": pts}, None, self.null_cond(len(items)))  # a fixed number of points: no mask

    def build_embedder(self, width):
        return RingEmbedder(width)

    def build_heads(self, width):
        lin = nn.Linear(width, 2)
        return FnModule(lambda h, mask: {"points": lin(h)}, lin)

    def reconstruction_loss(self, out, batch):
        err = ((out["points"] - batch.data["points"]) ** 2).sum(-1).mean()
        return err, {"mse": err.detach()}

    def to_domain(self, out, mask):
        return list(out["points"].float().cpu().numpy())

    def batch_to_domain(self, batch):
        return self.to_domain(batch.data, batch.mask)

    def evaluate(self, samples, per_sample_csv=None):
        dev = [float(np.abs(np.linalg.norm(p, axis=1) - self.cfg.radius).mean()) for p in samples]
        if per_sample_csv:
            Path(per_sample_csv).write_text("index,deviation\\n" + "".join(f"{i},{d}\\n" for i, d in enumerate(dev)))
        return {"ring/deviation": float(np.mean(dev)), "num_samples": len(samples)}

    def export(self, samples, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        np.save(Path(out_dir) / "ring.npy", np.stack(samples))
        return [Path(out_dir) / "ring.npy"]

    def load_samples(self, path):
        path = Path(path)
        return list(np.load(path / "ring.npy" if path.is_dir() else path))
'''

DEFAULTS = """# shipped with the package: read before the core's configs/ and --config
modality: ring
data:
  num_train: 48
  num_test: 12
model:
  latent_dim: 4
sample:
  solver: euler
  steps: 3
"""


@pytest.fixture(scope="module")
def plugin_root(tmp_path_factory):
    """``<tmp>/ringpkg/{__init__.py, adapter.py, ring.yaml}``, on sys.path only for this module's tests."""
    root = tmp_path_factory.mktemp("elsewhere")
    assert not str(root).startswith(str(Path(__file__).resolve().parents[1]))
    pkg = root / "ringpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "adapter.py").write_text(textwrap.dedent(ADAPTER))
    (pkg / "ring.yaml").write_text(DEFAULTS)
    sys.path.insert(0, str(root))
    load_adapter(SPEC)
    yield root
    sys.path.remove(str(root))
    registry._REGISTRY.pop("ring", None)
    for name in [m for m in sys.modules if m.startswith("ringpkg")]:
        del sys.modules[name]


def cli(*args, cwd, env=ENV):
    script = Path(sys.executable).with_name("unite-sci")  # the console script: the cwd is not on its sys.path
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "unite_sci.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


class TestRingConformance(AdapterConformance):
    modality = "ring"
    data_overrides = ["data.num_train=16", "data.num_test=4", "model.latent_dim=4"]

    @pytest.fixture(autouse=True)
    def _registered(self, plugin_root):
        yield


def test_shipped_defaults_come_before_config_file_and_overrides(plugin_root, tmp_path):
    cfg = load_config("ring")
    assert (cfg.data.num_train, cfg.sample.steps, cfg.model.latent_dim) == (48, 3, 4)  # from ring.yaml
    user = tmp_path / "user.yaml"
    user.write_text("data:\n  num_train: 40\nsample:\n  steps: 5\n")
    cfg = load_config("ring", str(user), ["sample.steps=7"])
    assert (cfg.data.num_train, cfg.sample.steps, cfg.data.num_test) == (40, 7, 12)


def test_python_api_trains_loads_and_samples(plugin_root, tmp_path):
    cfg = load_config("ring", overrides=[*SMALL, "train.max_steps=3", f"out={tmp_path / 'run'}"])
    summary = train(cfg)
    loaded = load_model(summary["checkpoint"])
    samples, info = generate(loaded.model, loaded.adapter, loaded.cfg.sample, num=5, progress=False)
    assert len(samples) == 5 and samples[0].shape == (6, 2) and loaded.train_steps == 3
    state = torch.load(summary["checkpoint"], weights_only=True)
    assert state["adapter_class"] == SPEC


def test_cli_adapter_flag_and_environment_variable(plugin_root, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--adapter", SPEC, "--modality", "ring", "--max-steps", 3, "--out", out, *SMALL,
            cwd=plugin_root)  # the package is in the current folder, installed nowhere
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = out / "checkpoints" / "last.pt"
    r = cli("sample", "--adapter", SPEC, "--checkpoint", ckpt, "--num", 4, "--out", tmp_path / "s", cwd=plugin_root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "s" / "samples_meta.json").read_text())["num_samples"] == 4
    env = {**ENV, "UNITE_SCI_ADAPTERS": SPEC, "PYTHONPATH": str(plugin_root)}
    r = cli("evaluate", "--modality", "ring", "--samples", tmp_path / "s", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "ring/deviation" in r.stdout, r.stderr[-2000:]

    # without it, the checkpoint's modality is unknown: one line naming the class it was trained with
    r = cli("sample", "--checkpoint", ckpt, "--num", 2, "--out", tmp_path / "t", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert SPEC in r.stderr and "unite_sci.adapters" in r.stderr and "toy" in r.stderr
    r = cli("train", "--adapter", "ringpkg.nothing:Ring", "--modality", "ring", cwd=plugin_root)
    assert r.returncode == 2 and "ringpkg.nothing" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_modality_says_how_to_register_one():
    with pytest.raises(UserError) as e:
        load_config("nosuchthing")
    msg = str(e.value)
    assert "'nosuchthing'" in msg and "toy" in msg and "unite_sci.adapters" in msg and "--adapter" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("returned, says", [
    (lambda width: (lambda data, mask: data["points"]), "returned function, not a torch.nn.Module"),
    (lambda width: nn.Identity(), "returned a Identity with no parameters"),
])
def test_build_time_check_of_adapter_modules(returned, says):
    from unite_sci_modalities.toy import ToyAdapter

    class Broken(ToyAdapter):
        def build_embedder(self, width):
            return returned(width)

    cfg = load_config("toy", overrides=list(TINY))
    with pytest.raises(UserError, match="Broken.build_embedder " + says):
        Unite(Broken(cfg.data), cfg)

    class Deliberate(ToyAdapter):  # parameter-free on purpose: FnModule says so
        def build_embedder(self, width):
            return FnModule(lambda data, mask: data["points"].new_zeros(*data["points"].shape[:2], width))

    Unite(Deliberate(cfg.data), cfg)
