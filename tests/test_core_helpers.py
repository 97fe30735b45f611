"""The core's shared plumbing: the process pool (unite_sci/parallel.py), atomic files and the file hash
(unite_sci/files.py), the masked mean and the percentage rule (unite_sci/reduce.py)."""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from unite_sci.errors import UserError
from unite_sci.files import atomic_write, file_hash, write_json
from unite_sci.parallel import available_cpus, parallel_map, resolve_workers, run_limited
from unite_sci.reduce import masked_mean, percent

FLAG = "UNITE_SCI_TEST_INITIALIZER"


# Worker functions live at module level: spawned workers import them by name.
def _set_flag(value: str) -> None:
    os.environ[FLAG] = value


def _env(name: str) -> str | None:
    return os.environ.get(name)


def _die_in_worker(x: int) -> int:
    if mp.parent_process() is not None:  # a worker: die as an out-of-memory kill would
        os._exit(1)
    return x


# ----------------------------------------------------------------------------- parallel_map
def test_worker_rule():
    assert resolve_workers(None) == resolve_workers(0) == available_cpus() >= 1
    assert resolve_workers(1) == 1 and resolve_workers(3) == 3
    with pytest.raises(ValueError, match="workers must be >= 0"):
        resolve_workers(-1)


def test_order_is_kept_and_failures_are_outcomes():
    items = [3, -1, "x", 7, 0, -5, 2, 9]
    for workers in (1, 2):
        outs = parallel_map(abs, items, workers=workers, progress=False)
        assert [o.value for o in outs] == [3, 1, None, 7, 0, 5, 2, 9]
        assert [o.error is None for o in outs] == [True, True, False, True, True, True, True, True]
        assert outs[2].error.startswith("TypeError")


def test_time_limit_counts_a_hung_item():
    t0 = time.perf_counter()
    o = run_limited(time.sleep, 5.0, 0.2)
    assert o.value is None and o.error == "timeout>0.2s" and time.perf_counter() - t0 < 2
    assert run_limited(int, "x", 1.0).error.startswith("ValueError")
    assert run_limited(int, "7", None).value == 7  # no limit
    outs = parallel_map(time.sleep, [0.0, 5.0, 0.0, 0.0], workers=2, time_limit_s=0.5, progress=False)
    assert [o.error is None for o in outs] == [True, False, True, True]


def test_workers_run_the_initializer_with_single_threaded_blas():
    outs = parallel_map(_env, [FLAG, "OMP_NUM_THREADS"] * 2, workers=2, progress=False,
                        initializer=_set_flag, initargs=("on",))
    assert [o.value for o in outs] == ["on", "1", "on", "1"]
    assert FLAG not in os.environ  # never run in this process


def test_a_dead_worker_falls_back_to_serial():
    with pytest.warns(UserWarning, match="process pool failed"):
        outs = parallel_map(_die_in_worker, [1, 2, 3, 4], workers=2, progress=False)
    assert [o.value for o in outs] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- atomic files
def test_atomic_write_text_and_binary_leave_only_the_file(tmp_path: Path):
    text = atomic_write(tmp_path / "sub" / "a.txt", lambda f: f.write("ünïcode\n"), binary=False)
    data = atomic_write(tmp_path / "sub" / "b.bin", lambda f: f.write(bytes(range(256))), binary=True)
    assert text.read_text(encoding="utf-8") == "ünïcode\n" and data.read_bytes() == bytes(range(256))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt", "b.bin"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def half(f):
        f.write("new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half, binary=False)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_concurrent_writers_of_one_path_never_share_a_temporary_file(tmp_path: Path):
    path = tmp_path / "cache.npz"
    seen = []

    def outer(f):
        f.write(b"outer")
        seen.extend(p.name for p in tmp_path.iterdir())
        atomic_write(path, lambda g: g.write(b"inner"), binary=True)  # a second writer, meanwhile

    atomic_write(path, outer, binary=True)
    assert len(seen) == 1 and seen[0].startswith("cache.npz.") and seen[0].endswith(".tmp")
    assert path.read_bytes() == b"outer"  # the last rename wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]


def test_file_hash_is_the_sha256_of_the_bytes(tmp_path: Path):
    data = os.urandom(3 * (1 << 20) + 5)  # more than one read block
    (tmp_path / "f").write_bytes(data)
    assert file_hash(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_write_json_writes_undefined_numbers_as_null(tmp_path: Path):
    path = write_json({"a": float("nan"), "b": [1.5, float("inf")], "c": (2,), "d": Path("x")},
                      tmp_path / "r.json")

    def refuse(word):
        raise AssertionError(f"non-standard JSON constant {word}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"a": None, "b": [1.5, None], "c": [2],
                                                                   "d": "x"}
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write"):
        write_json({}, tmp_path / "file" / "r.json")


# ----------------------------------------------------------------------------- reductions
def test_masked_mean_closed_form():
    import torch  # here, not at the top: spawned workers import this module for its worker functions

    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 7.0, 9.0], [4.0, 4.0, 4.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert masked_mean(x, mask).tolist() == [2.0, 7.0, 0.0]  # an empty sample gives 0, not NaN
    assert torch.equal(masked_mean(x, mask.float()), masked_mean(x, mask))
    err = torch.arange(12.0).view(2, 2, 3)  # (B, K, C), register mask (B, K, 1) counts C per register
    reg = torch.tensor([[True, False], [True, True]])
    assert masked_mean(err, reg.unsqueeze(-1)).tolist() == [1.0, 8.5]


def test_percent_of_nothing_is_undefined():
    assert percent(1, 4) == 25.0 and percent(1, 3, digits=4) == 33.3333 and percent(0, 5) == 0.0
    assert math.isnan(percent(0, 0)) and math.isnan(percent(0, 0, digits=4))


def test_every_modality_caches_under_one_root(monkeypatch, tmp_path: Path) -> None:
    from unite_sci.files import cache_root
    from unite_sci_modalities.crystals.data import default_cache_dir as crystals_cache
    from unite_sci_modalities.qm9.data import default_cache_dir as qm9_cache

    monkeypatch.delenv("UNITE_SCI_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "unite-sci"
    assert qm9_cache().parent == crystals_cache().parent == cache_root()
    monkeypatch.setenv("UNITE_SCI_CACHE", str(tmp_path / "c"))
    assert qm9_cache().parent == crystals_cache().parent == cache_root() == tmp_path / "c"


def test_figures_beside_a_per_sample_csv_are_named_like_it():
    # the temperature-1 evaluation once overwrote the main sample set's bond_lengths.png in the same folder
    from unite_sci.files import beside

    assert beside("e/per_sample.csv", "bond_lengths.png") == Path("e/bond_lengths.png")
    assert beside("e/per_sample_temperature_1.csv", "bond_lengths.png") == Path("e/bond_lengths_temperature_1.png")
    assert beside("e/run_per_sample.csv", "space_groups.png") == Path("e/run_space_groups.png")
    assert beside("e/scores.csv", "space_groups.png") == Path("e/scores_space_groups.png")
