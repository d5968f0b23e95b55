"""The layers hold: no import cycle among tritium's modules, and frontends reach the server only through
:mod:`tritium.api` (never :mod:`tritium.server` nor a backend).  Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import tritium

SRC = Path(tritium.__file__).parent


def _modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` below ``root`` (a package's name is its ``__init__``'s)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path], module_level: bool) -> set[str]:
    """The tritium modules ``name`` imports: at module level only (what runs on import, so what can cycle;
    ``if TYPE_CHECKING:`` blocks left out), or anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes: list[ast.AST] = []
    if module_level:
        pending: list[ast.stmt] = list(tree.body)
        while pending:
            node = pending.pop()
            if isinstance(node, ast.If):
                if not _is_type_checking(node):
                    pending += node.body + node.orelse
            elif isinstance(node, ast.Try):
                pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
            else:
                nodes.append(node)
    else:
        nodes = list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` names a module or one of its packages
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = SRC, module_level: bool = True) -> dict[str, set[str]]:
    modules = _modules(root)
    return {name: _imports(name, path, modules, module_level) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "tritium.frontends.http.routes" in graph["tritium.frontends.http.server"]
    assert "tritium.api" in graph["tritium.frontends.http.routes"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_tritium_modules():
    assert cycles(import_graph()) == []


def test_frontends_reach_the_server_only_through_the_api():
    graph = import_graph(module_level=False)  # any import, also inside functions and TYPE_CHECKING blocks
    wrong = {name: sorted(t for t in targets if t == "tritium.server" or t.startswith("tritium.backends")
                          or t in ("tritium.app", "tritium.cli"))
             for name, targets in graph.items() if name.startswith("tritium.frontends")}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_core_api_knows_no_frontend():
    graph = import_graph(module_level=False)
    for name in ("tritium.api", "tritium.server", "tritium.logsettings", "tritium.options"):
        upward = {t for t in graph[name] if t.startswith("tritium.frontends") or t in ("tritium.cli", "tritium.app")}
        assert not upward, name


def test_no_deferred_import_cycle_through_the_server_or_frontends():
    """Imports inside functions included: the server, the app, the CLI and the frontends form no cycle (before
    this layering, ``server`` → ``frontends`` → ``routes`` → ``server`` and ``server`` → ``cli`` did)."""
    ours = ("tritium.server", "tritium.app", "tritium.cli", "tritium.api", "tritium.logsettings", "tritium.frontends")
    tangled = [c for c in cycles(import_graph(module_level=False)) if any(m.startswith(ours) for m in c)]
    assert tangled == []
