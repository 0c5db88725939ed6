"""The package's rings (docs/design.md#rings-of-the-package): imports run only inward.

Faces (commands/, web/) are imported by nothing but bin/ and, for web/, the dashboard program; the
programs are imported by no face and no core module (the watcher's use of the scanner's scan is
the one program-to-program import); the core imports neither; store/ imports only itself and
files.py; and there is no import cycle. Imports under ``if TYPE_CHECKING:`` are annotations only.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "pipeline"
PROGRAMS = {"scanner", "watcher", "router", "notifier", "reporter", "dashboard"}
ENTRY = {"cli", "program", "supervise"}         # what every program and command runs on


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    path = ROOT / module.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _runtime_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements, leaving out those under ``if TYPE_CHECKING:``."""
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []) or [])
    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = _name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if _exists(f"{base}.{alias.name}") else base)
        graph[module] = {t for t in targets if t.startswith("pipeline.") and t != module}
    return graph


def _role(module: str) -> str:
    parts = module.split(".")
    if parts[1] in ("commands", "web"):
        return "face"
    if parts[1] in PROGRAMS:
        return "program"
    if parts[1] in ENTRY:
        return "entry"
    return "core"


def test_the_graph_sees_the_package():
    graph = _graph()
    assert "pipeline.web.app" in graph["pipeline.dashboard"]
    assert "pipeline.health" in graph["pipeline.commands.status"]


def test_nothing_imports_a_face_but_the_dashboard_program():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if _role(t) == "face" and _role(m) != "face"
             and not (m == "pipeline.dashboard" and t.startswith("pipeline.web"))]
    assert wrong == []


def test_faces_do_not_reach_into_each_other():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if _role(m) == "face" and _role(t) == "face" and m.split(".")[1] != t.split(".")[1]]
    assert wrong == []


def test_no_face_or_core_module_imports_a_program():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if _role(t) == "program" and _role(m) != "program"]
    assert wrong == []
    between = [(m, t) for m, targets in _graph().items() for t in targets
               if _role(t) == "program" and _role(m) == "program" and m != "pipeline.dashboard"]
    assert between == [("pipeline.watcher", "pipeline.scanner")]


def test_the_core_imports_no_program_loop_or_entry_point():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if _role(m) == "core" and _role(t) in ("entry", "program", "face")]
    assert wrong == []


def test_the_store_imports_only_itself_and_files():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if m.startswith("pipeline.store") and not t.startswith("pipeline.store") and t != "pipeline.files"]
    assert wrong == []


def test_the_vocabulary_and_times_are_leaves():
    graph = _graph()
    assert graph["pipeline.states"] == set() and graph["pipeline.times"] == set()


def test_there_is_no_import_cycle():
    graph = _graph()
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in graph.get(module, ()):
            visit(target)
        path.pop()
        done.add(module)
    for module in graph:
        visit(module)


def test_no_module_stands_beside_a_folder_of_its_name():
    clashes = [p for p in PACKAGE.rglob("*.py") if (p.with_suffix("")).is_dir()]
    assert clashes == []
