"""``--threads N`` on sample, evaluate, encode and reconstruct: torch threads and worker processes capped."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from test_cli import cli
from unite_sci.cli import _parser, main
from unite_sci.parallel import _THREAD_VARS, THREADS_ENV, limit_threads, resolve_workers


def test_limit_threads_caps_torch_blas_and_workers(monkeypatch):
    for var in (THREADS_ENV, *_THREAD_VARS):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    before = torch.get_num_threads()
    try:
        limit_threads(1)
        assert torch.get_num_threads() == 1
        assert resolve_workers(0) == resolve_workers(None) == resolve_workers(4) == 1
        assert all(os.environ[v] == "1" for v in _THREAD_VARS)
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv(THREADS_ENV, "3")
    assert resolve_workers(2) == 2 and resolve_workers(8) == 3


@pytest.mark.parametrize("argv", [
    ["sample", "--checkpoint", "c.pt", "--num", "2", "--out", "o"],
    ["evaluate", "--modality", "toy", "--samples", "s"],
    ["encode", "--checkpoint", "c.pt", "--inputs", "i", "--out", "o.npz"],
    ["reconstruct", "--checkpoint", "c.pt", "--inputs", "i", "--out", "o"],
])
def test_the_four_commands_take_threads(argv):
    args, _ = _parser().parse_known_args([*argv, "--threads", "2"])
    assert args.threads == 2


def test_threads_zero_is_one_line(capsys):
    assert main(["evaluate", "--modality", "toy", "--samples", "nowhere", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads must be > 0, got 0"


def test_evaluate_runs_with_one_thread(tmp_path):
    pts = [np.random.RandomState(i).randn(4, 2).astype(np.float32) for i in range(3)]
    np.savez(tmp_path / "points.npz", points=np.concatenate(pts), sizes=np.array([4, 4, 4]))
    r = cli("evaluate", "--modality", "toy", "--samples", tmp_path, "--threads", 1)
    assert json.loads(r.stdout)["machine"]["torch_threads"] == 1
