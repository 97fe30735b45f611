"""The core's import graph has no circle (STYLE: one obvious way in; a module below another never reaches up).

Every ``import`` counts, the ones inside functions too: a deferred import hides a circle from the
interpreter but not from a reader. The graph is read with ``ast``, so nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "unite_sci"


def core_imports(source: str, modules: set[str]) -> set[str]:
    """Names of the core modules that ``source`` (one core module's text) imports, at any depth."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            absolute = (node.module or "").split(".")
            if node.level == 1 and node.module:  # from .engine import x
                deps.add(absolute[0])
            elif node.level == 1 or absolute == ["unite_sci"]:  # from . import engine
                deps |= {a.name for a in node.names}
            elif absolute[0] == "unite_sci":  # from unite_sci.engine import x
                deps.add(absolute[1])
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("unite_sci.")}
    return deps & modules


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of ``graph`` as a path that returns to its start (``[a, b, a]``), or []."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(u: str) -> list[str]:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        path.pop()
        state[u] = 2
        return []

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return []


def test_find_cycle_sees_a_deferred_circle():
    """The checker itself: the circle this test was written for (trainer -> engine inside a method)."""
    trainer = "from .config import X\n\ndef f():\n    from .engine import generate\n"
    engine = "from .trainer import Trainer\n"
    mods = {"trainer", "engine", "config"}
    graph = {"trainer": core_imports(trainer, mods), "engine": core_imports(engine, mods), "config": set()}
    assert graph["trainer"] == {"config", "engine"}
    assert find_cycle(graph) == ["engine", "trainer", "engine"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_core_has_no_import_circle():
    files = {p.stem: p for p in CORE.glob("*.py") if p.stem != "__init__"}
    graph = {m: core_imports(p.read_text(), set(files)) - {m} for m, p in files.items()}
    assert "generation" in graph["trainer"] and "trainer" not in graph["generation"]
    assert find_cycle(graph) == [], f"import circle in unite_sci: {' -> '.join(find_cycle(graph))}"
