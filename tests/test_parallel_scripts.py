"""parallel_map from a plain script: without an ``if __name__ == "__main__":`` guard it runs serially with
one line instead of the multiprocessing "bootstrapping phase" traceback per worker; with a guard it uses
worker processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from unite_sci.parallel import _unguarded, main_reimport_problem

BODY = """
import os
from unite_sci.parallel import parallel_map

def square(x):
    return (x * x, os.getpid())

def run():
    outs = parallel_map(square, list(range(40)), workers=2, progress=False)
    print(sum(o.value[0] for o in outs), len({o.value[1] for o in outs} - {os.getpid()}))
"""
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def run_script(path: Path, text: str) -> subprocess.CompletedProcess:
    path.write_text(text)
    return subprocess.run([sys.executable, str(path)], env=ENV, capture_output=True, text=True, timeout=240)


def test_an_unguarded_script_runs_serially_in_one_line(tmp_path):
    r = run_script(tmp_path / "plain.py", BODY + "\nrun()\n")
    assert r.returncode == 0, r.stderr
    total, worker_pids = map(int, r.stdout.split())
    assert total == sum(x * x for x in range(40)) and worker_pids == 0  # all in the script's own process
    assert "Traceback" not in r.stderr and "bootstrapping" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "unite-sci: running in one process: the script 'plain.py' has no `if __name__ == \"__main__\":` guard, "
        "which worker processes need; add one to use every CPU"]


def test_a_guarded_script_uses_worker_processes(tmp_path):
    r = run_script(tmp_path / "guarded.py", BODY + "\nif __name__ == '__main__':\n    run()\n")
    assert r.returncode == 0, r.stderr
    total, worker_pids = map(int, r.stdout.split())
    assert total == sum(x * x for x in range(40)) and worker_pids >= 1
    assert r.stderr.strip() == "", r.stderr


def test_the_rule_reads_the_main_file(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nif __name__ == '__main__':\n    print(x)\n")
    (tmp_path / "b.py").write_text("def f():\n    if __name__ == '__main__':\n        pass\nf()\n")  # not top level
    assert _unguarded(str(tmp_path / "a.py")) is None
    assert "no `if __name__" in _unguarded(str(tmp_path / "b.py"))
    assert "cannot be read again" in _unguarded(str(tmp_path / "missing.py"))  # e.g. a script piped on stdin
    assert main_reimport_problem("fork") is None
    assert main_reimport_problem("spawn") is None  # pytest's own entry point is guarded
