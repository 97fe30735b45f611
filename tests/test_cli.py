"""CLI smoke runs on the toy domain, and one-line errors for user mistakes."""
import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
TINY = ["model.depth=2", "model.width=64", "model.heads=2", "model.dec_depth=1", "model.dec_width=64",
        "model.dec_heads=2", "data.num_train=64", "data.num_test=16", "train.batch_size=16", "train.progress=false"]


def cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "unite_sci.cli", *map(str, args)], capture_output=True,
                       text=True, env=ENV, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cli("train", "--modality", "toy", "--max-steps", 6, "--out", out, *TINY)
    return out


def test_train_writes_the_run_folder(trained):
    assert (trained / "config.yaml").exists() and (trained / "checkpoints" / "last.pt").exists()
    rows = [json.loads(r) for r in (trained / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6 and "samples_per_s" in rows[-1]


def test_sample_then_evaluate(trained, tmp_path):
    cli("sample", "--checkpoint", trained / "checkpoints" / "last.pt", "--num", 5, "--solver", "euler",
        "--steps", 3, "--cfg", 2.0, "--out", tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "samples_meta.json").read_text())
    assert meta["num_samples"] == 5 and meta["cfg_scale"] == 2.0 and meta["checkpoint_sha256"]
    r = cli("evaluate", "--modality", "toy", "--samples", tmp_path / "s", "--per-sample", tmp_path / "p.csv",
            "--out", tmp_path / "m.json")
    assert json.loads(r.stdout)["num_samples"] == 5
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 6


def test_benchmark_from_checkpoint(trained, tmp_path):
    cli("benchmark", "toy", "--checkpoint", trained / "checkpoints" / "last.pt", "--num-samples", 4,
        "--out", tmp_path / "b", "sample.steps=2")
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["generation"]["num_samples"] == 4 and (tmp_path / "b" / "report.md").exists()


def test_resume_continues(trained):
    cli("train", "--modality", "toy", "--max-steps", 8, "--out", trained, "--resume", *TINY)
    rows = [json.loads(r) for r in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-1] == 8


@pytest.mark.parametrize("args,needle", [
    (["train", "--modality", "nope", "--max-steps", "1"], "unknown modality 'nope'"),
    (["train", "--modality", "toy", "--max-steps", "1", "train.batchsize=3"], "train.batchsize"),
    (["train", "--modality", "toy", "--max-steps", "-1"], "--max-steps must be > 0"),
    (["sample", "--checkpoint", "/no/such.pt", "--num", "2", "--out", "/tmp/x"], "does not exist"),
    (["evaluate", "--modality", "toy", "--samples", "/no/such"], "does not exist"),
    (["benchmark", "nope"], "unknown benchmark"),
    (["train", "--modality", "toy", "--max-steps", "1", "--out", "/dev/null/run"], "cannot write to run folder"),
    (["evaluate", "--modality", "toy", "--samples", "/etc/hostname"], "points.npz"),
])
def test_user_mistakes_give_one_line(args, needle):
    r = cli(*args, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_garbage_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = cli("sample", "--checkpoint", bad, "--num", 2, "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "cannot be read" in r.stderr


def test_closed_stdout_ends_without_a_traceback():
    # The reader goes away before the first line is written (`unite-sci list | head -0`): EPIPE for sure.
    p = subprocess.Popen([sys.executable, "-m", "unite_sci.cli", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("name,content", [("config.yaml", b"model:\n  depth: 2\n"),
                                          ("random.bin", bytes(range(256)) * 4)])
def test_a_file_that_is_not_a_checkpoint_gives_one_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    r = cli("sample", "--checkpoint", path, "--num", 2, "--out", tmp_path / "o", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(path) in lines[0] and "not a unite-sci checkpoint" in lines[0]


@pytest.mark.parametrize("command", ["sample", "evaluate", "benchmark"])
def test_an_unwritable_out_is_refused_before_any_work(trained, tmp_path, command):
    bad = "/dev/null/out"  # a folder can never be made under a device file, whoever runs the test
    args = {"sample": ["sample", "--checkpoint", trained / "checkpoints" / "last.pt", "--num", 2, "--out", bad],
            # the samples do not exist either: the output folder must be refused first
            "evaluate": ["evaluate", "--modality", "toy", "--samples", tmp_path / "none", "--out", bad + "/m.json"],
            "benchmark": ["benchmark", "toy", "--checkpoint", trained / "checkpoints" / "last.pt",
                          "--out", bad]}[command]
    r = cli(*args, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith("error: cannot write to output folder '/dev/null/out")


def test_every_option_has_help_and_its_default_and_train_lists_the_modalities():
    import argparse

    from unite_sci.adapter import available
    from unite_sci.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {action.option_strings or action.dest}"
            assert action.help, f"{where} has no help text"
            # a required option or a repeatable one (empty by default) has no default to state
            if action.option_strings and not action.required and not isinstance(action, argparse._AppendAction):
                assert "default" in action.help, f"{where} does not state its default"
    help_text = cli("train", "--help").stdout
    assert all(m in help_text for m in available()) and available()
