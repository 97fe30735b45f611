"""Docs check: every `unite-sci` line in a ```bash / ```sh block of README.md and docs/*.md parses with the
real command-line parser and names a registered subcommand, benchmark and modality; `key=value` settings of
`train`, `config` and `evaluate` are valid config keys; every ```python block runs as a script in an empty
folder (a time limit each), and the runnable ones keep their work under `if __name__ == "__main__":`; the
documented conformance test class passes for a copy of the toy adapter; the defaults the docs state are the
config's; the README's claim verdicts are results.md's; every relative link resolves; the README stays an
entry page (<= 150 lines) whose install steps are the Makefile's."""
from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unite_sci import cli
from unite_sci.adapter import available
from unite_sci.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# pages whose ```python blocks are scripts whose work must sit under the main guard (the others define classes)
SCRIPT_PAGES = {"README.md", "python-api.md"}
PYTEST_FILE = "# tests/"  # a block that starts so is a pytest file, run by the conformance test below
BLOCK_TIME_LIMIT_S = 300  # per block; on a loaded 2-core machine they took 14-40 s each
# "page#n" (the page's n-th ```python block, from 1) of blocks left to `pytest -m slow`: models.md's repeats the
# README's load / sample / encode of the shipped qm9 model (38 s there)
SLOW_BLOCKS = {"docs/models.md#1"}


def blocks(page: Path, langs: tuple[str, ...]) -> list[tuple[int, str]]:
    """(first line number, text) of every fenced block of one of ``langs`` in ``page``."""
    text = page.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) in langs]


def commands(text: str) -> list[list[str]]:
    """The argument lists of the ``unite-sci`` lines of a shell block (continuations joined, comments and
    leading ``VAR=value`` words dropped)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and ENV_WORD.match(words[0]):
            words = words[1:]
        if words and words[0] == "unite-sci":
            found.append(words[1:])
    return found


def documented() -> list[tuple[str, list[str]]]:
    return [(f"{page.relative_to(ROOT)}:{line}", argv) for page in PAGES
            for line, text in blocks(page, ("bash", "sh")) for argv in commands(text)]


def check_command(argv: list[str]) -> str | None:
    """None if the command line parses and names registered things, else why not."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = cli.parse_args(argv)
    except SystemExit:
        return (err.getvalue().strip().splitlines() or ["argparse refused it"])[-1]
    plugin = bool(getattr(args, "adapter", []))  # a modality of an adapter named on the same line
    modality = getattr(args, "modality", None)
    if modality is not None and modality not in available() and not plugin:
        return f"unknown modality {modality!r}"
    if args.command == "benchmark" and args.name not in set(cli._benchmarks()) | set(available()):
        return f"unknown benchmark {args.name!r}"
    return None


def check_keys(argv: list[str]) -> str | None:
    """For `train`, `config` and `evaluate` of a registered modality: the ``key=value`` words against the
    modality's config schema (what the command itself would refuse before any work)."""
    from unite_sci.engine import load_config

    args = cli.parse_args(argv)
    if args.command not in ("train", "config", "evaluate") or args.modality not in available():
        return None
    # the options that the commands turn into config keys (cmd_train, cmd_evaluate)
    flags = {"data.data_dir": getattr(args, "data_dir", None), "model.preset": getattr(args, "preset", None)}
    over = [f"{k}={v}" for k, v in flags.items() if v] + list(args.overrides)
    try:
        load_config(args.modality, None, over)
    except UserError as e:
        return str(e)
    return None


def test_the_checks_can_fail():
    assert check_command(["trian", "--modality", "qm9"])                       # unknown subcommand
    assert check_command(["train", "--modality", "qm9", "--minutes", "5"])     # unknown option
    assert check_command(["train", "--modality", "nosuch"])                    # unknown modality
    assert check_command(["benchmark", "qm10"])                                # unknown benchmark
    assert check_command(["sample", "--num", "5", "--out", "s"])               # a required option missing
    assert check_command(["benchmark", "qm9-ablation", "seeds=0,1"]) is None
    assert check_keys(["train", "--modality", "toy", "flow.flow_batchez=3"])
    assert check_keys(["train", "--modality", "toy", "flow.flow_batches=3"]) is None
    assert commands("A=1 B=2 unite-sci list   # a comment\n\\\nunite-sci train \\\n  --modality toy\npip x\n") == [
        ["list"], ["train", "--modality", "toy"]]


def test_every_documented_command_parses():
    found = documented()
    assert len(found) > 60, "the docs check found too few commands: is the fence pattern still right?"
    bad = [f"{where}: unite-sci {shlex.join(argv)}: {why}" for where, argv in found
           if (why := check_command(argv))]
    assert not bad, "\n".join(bad)


def test_every_documented_setting_is_a_config_key():
    bad = [f"{where}: unite-sci {shlex.join(argv)}: {why}" for where, argv in documented()
           if check_command(argv) is None and (why := check_keys(argv))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile_and_scripts_are_guarded(page):
    for line, text in blocks(page, ("python",)):
        tree = compile(text, f"{page.name}:{line}", "exec", ast.PyCF_ONLY_AST)
        if page.name not in SCRIPT_PAGES:
            continue
        loose = [node.lineno + line - 1 for node in tree.body
                 if not isinstance(node, (ast.Import, ast.ImportFrom, ast.If))
                 or (isinstance(node, ast.If) and ast.unparse(node.test) not in
                     ("__name__ == '__main__'", '__name__ == "__main__"'))]
        assert not loose, f"{page.name}: code outside `if __name__ == '__main__':` at lines {loose}"


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} (no file {dest})"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", dest.read_text()), re.M)
            assert anchor in {slug(h) for h in headings}, f"{page.name}: link to {target}: no such heading"


def test_readme_is_an_entry_page_with_the_makefiles_install_steps():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; guides and results belong in docs/"
    shell = "\n".join(text for _, text in blocks(README, ("bash", "sh")))
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    steps = [re.sub(r"\s+-q\b", "", "python -m pip" + line.split("$(PIP)", 1)[1]).strip()
             for line in recipe.splitlines() if "$(PIP)" in line]
    assert len(steps) >= 4
    missing = [s for s in steps if s not in shell]
    assert not missing, f"README.md's install steps differ from the Makefile's: {missing}"


# ----------------------------------------------------------------------------- Python blocks, run
def python_blocks() -> list[tuple[str, str]]:
    """("page#n", text) of every ```python block."""
    return [(f"{page.relative_to(ROOT)}#{n}", text) for page in PAGES
            for n, (_, text) in enumerate(blocks(page, ("python",)), 1)]


def _script_params() -> list:
    return [pytest.param(text, id=where, marks=[pytest.mark.slow] if where in SLOW_BLOCKS else [])
            for where, text in python_blocks() if not text.startswith(PYTEST_FILE)]


@pytest.mark.parametrize("text", _script_params())
def test_every_python_block_runs_as_a_script(tmp_path, text):
    """Right after install: an empty folder, the shipped models, nothing trained before."""
    (tmp_path / "example.py").write_text(text)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("UNITE_SCI_ADAPTERS", None)
    t0 = time.time()
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=BLOCK_TIME_LIMIT_S)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    print(f"ran in {time.time() - t0:.1f} s")


def test_the_slow_blocks_exist():
    assert SLOW_BLOCKS <= {where for where, _ in python_blocks()}, "a block in SLOW_BLOCKS moved: renumber it"


def test_the_documented_conformance_class_passes_for_a_copied_toy_adapter(tmp_path):
    """docs/own-domain.md's test class, verbatim, in a temporary package beside a copy of modalities/toy.py
    registered as "mymod" (loaded through $UNITE_SCI_ADAPTERS, as the page says), run by pytest."""
    from unite_sci.testing import AdapterConformance

    [(where, text)] = [(w, t) for w, t in python_blocks() if t.startswith(PYTEST_FILE)]
    assert where.startswith("docs/own-domain.md") and 'modality = "mymod"' in text
    toy = (ROOT / "modalities" / "toy.py").read_text()
    assert toy.count('@register("toy")') == 1
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "adapter.py").write_text(toy.replace('@register("toy")', '@register("mymod")'))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mymod.py").write_text(text)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(tmp_path),
           "UNITE_SCI_ADAPTERS": "mypkg.adapter:ToyAdapter"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_mymod.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    checks = len([name for name in dir(AdapterConformance) if name.startswith("test_")])
    assert r.returncode == 0 and f"{checks} passed" in r.stdout, (r.stdout + r.stderr)[-3000:]


# ----------------------------------------------------------------------------- one statement of each default
DEFAULT_TEMPERATURE = re.compile(r"QM9 default:? (\d+(?:\.\d+)?)|default sampling temperature \((\d+(?:\.\d+)?)"
                                 r"|QM9 the default is the paper's temperature (\d+(?:\.\d+)?)"
                                 r"|at the default temperature (\d+(?:\.\d+)?)|default temperature (\d+(?:\.\d+)?)")


def test_the_qm9_default_temperature_is_stated_as_the_config_sets_it():
    from unite_sci.engine import load_config

    default = load_config("qm9").sample.temperature
    stated = [(page.name, float(next(g for g in m.groups() if g))) for page in PAGES
              for m in DEFAULT_TEMPERATURE.finditer(" ".join(page.read_text().split()))]
    assert len(stated) >= 3, stated
    assert all(v == default for _, v in stated), f"configs/qm9.yaml samples at {default}; the docs say {stated}"


def test_the_global_batch_is_stated():
    text = " ".join((ROOT / "docs" / "training.md").read_text().split())
    assert "`train.batch_size` is the global batch" in text and "printed once, by rank 0" in text


def verdicts(page: Path, heading: str) -> list[str]:
    """The first word of the last column ("yes", "no", "partly") of each row of the table after ``heading``."""
    table = page.read_text().split(heading, 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    rows = [r for r in ("|" + table).splitlines() if r.startswith("|") and not r.startswith("|---")][1:]
    return [re.sub(r"[^a-z]", " ", r.rstrip(" |").rsplit("|", 1)[1].lower()).split()[0] for r in rows]


def test_the_readme_claim_table_agrees_with_results():
    ours = verdicts(README, "## The paper's claims, checked at small scale")
    theirs = verdicts(ROOT / "docs" / "results.md", "### Each claim of the paper, and whether it holds here")
    assert len(ours) >= 6 and set(ours) <= {"yes", "no", "partly"}, ours
    assert ours == theirs[:len(ours)], f"README.md {ours} against docs/results.md {theirs}"
