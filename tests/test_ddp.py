"""Two gloo processes under torchrun follow the single-process run with the same global batch."""
import json
import os
import subprocess
import sys

from test_cli import TINY

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def losses(out):
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]  # the step-0 row holds no loss


def test_two_process_gloo_matches_one_process(tmp_path):
    args = ["train", "--modality", "toy", "--max-steps", "4", *TINY, "train.log_every=1", "flow.flow_batches=2"]
    subprocess.run([sys.executable, "-m", "unite_sci.cli", *args, "--out", str(tmp_path / "one")],
                   check=True, env=ENV, capture_output=True, timeout=300)
    # --standalone: a c10d rendezvous on localhost port 0, so the OS picks a free port (never a fixed one
    # that a parallel test run or another program may hold)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "unite_sci.cli", *args, "--out", str(tmp_path / "two")],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(one, two)), (one, two)
