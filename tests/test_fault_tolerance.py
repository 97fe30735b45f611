"""A run killed with SIGKILL resumes to exactly the weights of an uninterrupted run (CPU)."""
import json
import os
import signal
import subprocess
import sys
import time

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
