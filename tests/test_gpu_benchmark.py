"""The GPU benchmark: its CPU dry run (``device=cpu``) goes through every section of the GPU run and reports
finite positive numbers; without CUDA and without ``device=cpu`` it refuses in one line; typos are refused."""
import json
import math
from pathlib import Path

import pytest
import torch

from unite_sci.errors import ConfigError
from unite_sci_benchmarks import gpu

CRYSTALS = Path(__file__).parent / "data" / "crystals"


def test_cpu_dry_run_reports_every_section(tmp_path, tiny_overrides, monkeypatch):
    # torch.compile as the identity: the compiled measurements go through their own path (plan, static
    # shapes, freeing the graphs) without minutes of CPU compiling
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    report = gpu.run(str(tmp_path / "out"), overrides=[
        "device=cpu", "presets=tiny", "train_preset=tiny", "batch=8", "steps=1", "matmul_n=128",
        "matmul_seconds=0.05", "train_minutes=0.02", "num_samples=8", "recon=8", *tiny_overrides,
        "data.num_train=64", "data.num_val=16", "data.num_test=16", "data.eval_workers=1", "data.load_workers=1",
        f"data.cache_dir={tmp_path / 'cache'}", f"data.offline_root={CRYSTALS / 'offline'}",
        "data.holdout_fraction=0.25"])
    text = report.read_text()
    for section in ("1. Matmul reference", "2. Training step", "3. QM9 training run", "4. Extrapolation",
                    "Wall time per section", "CPU dry run"):
        assert section in text, section
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(data["matmul_flops"]) == {"fp32", "bf16"} and min(data["matmul_flops"].values()) > 1e6
    steps = data["steps"]
    assert [(r["modality"], r["compiled"]) for r in steps] == [("qm9", False), ("mp20", False), ("qm9", True),
                                                               ("mp20", True)] and data["skipped"] == []
    for r in steps:
        for k in ("samples_per_s", "step_s", "flops_per_step", "achieved_TFLOPs", "mfu_%", "params_M"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["batch"] == 8 and r["peak_gpu_MB"] is None  # no GPU memory on a CPU
    run = data["qm9_run"]
    assert run["sampling"]["num_samples"] == 8 and run["reconstruction_num"] == 8 and run["training"]["steps"] > 0
    assert {"edm/molecule_stability", "adit/validity", "connected_validity"} <= set(run["generation"])
    assert data["qm9_table"][0]["match"] is not None
    assert data["qm9_train_size"] == 64 and data["extrapolation"]
    for r in data["extrapolation"]:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("samples_per_s", "epoch_s", "hours", "days")), r
    walls = data["section_wall_s"]
    assert list(walls)[-1] == "total" and len(walls) == 6 and all(v > 0 for v in walls.values())


def test_without_cuda_it_needs_device_cpu(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, on a GPU machine too
    r = subprocess.run([sys.executable, "-m", "unite_sci.cli", "benchmark", "gpu", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: benchmark gpu needs a CUDA GPU"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "device=cpu" in r.stderr, r.stderr


@pytest.mark.parametrize("word,needle", [
    ("preset=S", "benchmark option 'preset': unknown, valid: presets,"),
    ("compile=maybe", "benchmark option 'compile[0]'"),
    ("train_minutes=0", "benchmark option 'train_minutes': must be > 0"),
    ("data.num_trian=8", "config key 'data.num_trian': no data config of mp20, qm9 has it"),
    ("presets=S,Q", "'Q' is not one of tiny"),
])
def test_typos_are_refused_in_one_line_before_any_work(word, needle, tmp_path):
    with pytest.raises(ConfigError) as e:
        gpu.run(str(tmp_path / "out"), overrides=["device=cpu", word])
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()
