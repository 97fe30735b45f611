"""A run killed with SIGKILL resumes to exactly the weights of an uninterrupted run (CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_cli import TINY

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
ARGS = ["train", "--modality", "toy", "--max-steps", "12", *TINY, "train.ckpt_every=3", "train.log_every=1",
        "train.keep_checkpoints=10"]


def run(out, *extra):
    return subprocess.run([sys.executable, "-m", "unite_sci.cli", *ARGS, "--out", str(out), *extra],
                          env=ENV, capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    assert run(tmp_path / "straight").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "unite_sci.cli", *ARGS, "--out", str(tmp_path / "killed")],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "step_00000006.pt").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # somewhere between step 6 and the end
    proc.wait()
    r = run(tmp_path / "killed", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["optimizers"][0]["state"], b["optimizers"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    steps = [json.loads(r)["step"] for r in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no duplicated rows after the resume


# --------------------------------------------------------------------- kill during a checkpoint write
WRITER = """
import sys, torch
from pathlib import Path
from unite_sci.checkpoint import atomic_save
d = Path(sys.argv[1])
atomic_save({"format": "unite-sci/1", "step": 1, "modality": "toy", "x": torch.zeros(4)}, d / "step_00000001.pt")
print("ready", flush=True)
big = torch.randn(64, 2**20)  # 256 MB: the write takes long enough to be killed in the middle
for step in range(2, 1000):
    atomic_save({"format": "unite-sci/1", "step": step, "modality": "toy", "x": big}, d / f"step_{step:08d}.pt")
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    from unite_sci.checkpoint import latest_complete, list_checkpoints

    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    def tmp() -> list[Path]:  # the writer's temporary file: step_00000002.pt.<pid>-<tag>.tmp
        return list(tmp_path.glob("step_00000002.pt.*.tmp"))

    deadline = time.time() + 120
    while time.time() < deadline and not any(p.stat().st_size > 2**20 for p in tmp() if p.exists()):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of writing step 2
    proc.wait()
    assert tmp() and not (tmp_path / "step_00000002.pt").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert latest_complete(tmp_path)["step"] == 1


# --------------------------------------------------------------------- unwritable folder, full disk
def test_unwritable_run_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run(blocker / "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "run" in r.stderr and blocker.read_text() == "not a folder"


def test_full_disk_during_training_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    from test_trainer import make_trainer
    from unite_sci.errors import UserError

    tr = make_trainer(tmp_path, "train.ckpt_every=4")
    real_save = torch.save
    calls = []

    def save(obj, fh, *a, **k):
        calls.append(1)
        if len(calls) == 3:  # step 4 wrote step_4 + last.pt; step 8's file hits a full disk half-way
            fh.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    try:
        tr.fit()
    except UserError as e:
        msg = str(e)
    else:
        raise AssertionError("a full disk went unnoticed")
    assert "No space left on device" in msg and "\n" not in msg and "step_00000008.pt" in msg
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["last.pt", "step_00000004.pt"], ckpts  # no .tmp, no damaged step 8 posing as valid
    from unite_sci.checkpoint import latest_complete
    assert latest_complete(tmp_path / "checkpoints")["step"] == 4


# --------------------------------------------------------------------- non-finite gradients
def test_infinite_gradient_with_a_finite_loss_is_skipped(tmp_path):
    from test_trainer import make_trainer
    from unite_sci.errors import UserError

    tr = make_trainer(tmp_path, "train.max_nonfinite=2", "optim.grad_clip=0")
    p = next(tr.model.parameters())
    p.register_hook(lambda g: g * float("inf"))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with pytest.raises(UserError, match="2 steps in a row"):
        tr.fit()
    assert tr.skipped == 2 and all(torch.equal(v, before[k]) for k, v in tr.model.state_dict().items())
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").glob("*.pt"))


def test_isolated_nonfinite_steps_are_counted_and_training_goes_on(tmp_path, monkeypatch):
    from test_trainer import make_trainer

    tr = make_trainer(tmp_path, "train.max_nonfinite=2")
    real = tr.adapter.reconstruction_loss
    bad_steps = {2, 5}

    def loss(out, b):
        value, parts = real(out, b)
        return (value * float("nan"), parts) if tr.step in bad_steps else (value, parts)

    monkeypatch.setattr(tr.adapter, "reconstruction_loss", loss)
    tr.fit()
    assert tr.step == 8 and tr.skipped == 2
    assert all(torch.isfinite(v).all() for v in tr.model.state_dict().values() if v.is_floating_point())


def test_grad_clip_zero_means_no_clipping(tmp_path):
    from test_trainer import make_trainer

    tr = make_trainer(tmp_path, "optim.grad_clip=0", "optim.warmup_steps=0", "optim.schedule=constant")
    batch = next(iter(tr._loader()))
    logs = tr.train_step(batch)
    assert logs is not None and logs["grad_norm"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.model.parameters())
