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
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"
    saved = sorted(int(p.stem.split("_")[1]) for p in ckpts.glob("step_*.pt"))
    assert saved and 6 <= saved[-1] < 12, f"the kill landed after the last step: checkpoints {saved}"
    r = run(tmp_path / "killed", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    # a resume from the last checkpoint, not a restart from step 0 (which would give the same weights)
    assert f"resumed from step {saved[-1]} (" in r.stderr and f"step_{saved[-1]:08d}.pt" in r.stderr, r.stderr
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


# --------------------------------------------------------------------- SIGINT / SIGTERM
def _wait_for_a_step(proc: subprocess.Popen, metrics: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and '"loss"' in metrics.read_text():  # a trained step, not the step-0 row
            return
        time.sleep(0.05)
    raise AssertionError(f"no step logged (rc {proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_resume_continues_from_it(tmp_path, sig):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "unite_sci.cli", *ARGS, "--out", str(out)]
    cmd[cmd.index("--max-steps") + 1] = "100000"  # only the signal ends it
    cmd.append("train.compile=false")  # a 100,000-step run would compile (and print so): not what this tests
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_a_step(proc, out / "metrics.jsonl")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)
    step = state["step"]
    assert step > 0 and f"{sig.name} at step {step}" in err and f"step_{step:08d}.pt" in err, err

    r = run(out, "--resume", "--max-steps", str(step + 2))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from step {step} (" in r.stderr and f"step_{step:08d}.pt" in r.stderr, r.stderr
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["step"] == step + 2


def test_resume_with_nothing_to_resume_says_where_it_looked(tmp_path):
    r = run(tmp_path / "fresh", "--resume", "--max-steps", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nothing to resume" in r.stderr and str(tmp_path / "fresh" / "checkpoints") in r.stderr, r.stderr


def test_a_second_signal_during_the_checkpoint_write_keeps_the_previous_one(tmp_path):
    from unite_sci.checkpoint import atomic_save, latest_complete
    from unite_sci.errors import Interrupted
    from unite_sci.files import atomic_write
    from unite_sci.stopping import StopSignals

    atomic_save({"format": "unite-sci/1", "step": 1, "modality": "toy"}, tmp_path / "step_00000001.pt")

    def write(fh):  # the second signal arrives half-way through the next checkpoint
        fh.write(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)
        fh.write(b"never")

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first one only asks the loop to stop
        assert stop.signum == signal.SIGINT
        with pytest.raises(Interrupted, match="second SIGTERM") as e:
            atomic_write(tmp_path / "step_00000002.pt", write, binary=True)
    assert e.value.exit_code == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt"]  # no .tmp, no step 2
    assert latest_complete(tmp_path)["step"] == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored


# --------------------------------------------------------------------- bit-exact under load
BURN = "import time\nend = time.time() + 600\nwhile time.time() < end: pass"


def test_two_thread_runs_and_a_resume_are_bit_identical_while_the_cpu_is_loaded(tmp_path):
    env = {**ENV, "OMP_NUM_THREADS": "2"}
    args = ["train.threads=2", "--max-steps", "8"]
    burner = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        runs = []
        for name, extra in (("a", []), ("b", []), ("half", ["--max-steps", "4"])):
            r = subprocess.run([sys.executable, "-m", "unite_sci.cli", *ARGS, "--out", str(tmp_path / name),
                                *args, *extra], env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
        r = subprocess.run([sys.executable, "-m", "unite_sci.cli", *ARGS, "--out", str(tmp_path / "half"),
                            *args, "--resume"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "resumed from step 4" in r.stderr, r.stderr[-2000:]
    finally:
        burner.kill()
        burner.wait()
    a, b, c = (torch.load(tmp_path / n / "checkpoints/last.pt", weights_only=True) for n in ("a", "b", "half"))
    assert a["step"] == b["step"] == c["step"] == 8
    for other in (b, c):
        for key in ("model", "ema"):
            assert all(torch.equal(a[key][k], other[key][k]) for k in a[key]), key
