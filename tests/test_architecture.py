"""The structure docs/architecture.md draws, checked against the code: its layers (a module
imports its own layer and the ones below, never one above), no import circle, no module over
600 lines and no function over 80.  Imports inside functions count; imports under
``if TYPE_CHECKING:`` do not (they never run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asynchy"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    """asynchy's modules by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The asynchy modules a module imports when it runs (a package's submodule named in a
    ``from package import sub`` counts as the submodule, not the package)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if _type_checking(node):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name in known)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if not node.module or not node.module.startswith("asynchy"):
                return
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            found.update(subs)
            if len(subs) < len(node.names) and node.module in known:
                found.add(node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def layers() -> dict[str, int]:
    """docs/architecture.md's layer block: module (or package/) -> layer, the top one highest."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"## The layers\n\n```\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no layer block"
    rows: list[list[str]] = []
    for line in block.group(1).splitlines():
        if line.strip().startswith("---"):
            continue
        label = line[:19].strip()
        words = line[19:].split()
        if label:
            rows.append([])
        rows[-1].extend(words)
    out: dict[str, int] = {}
    for level, names in enumerate(reversed(rows)):
        for name in names:
            out[name.rstrip("/")] = level
    return out


def layer_of(module: str, table: dict[str, int]) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in table:
            return table[key]
    raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it there")


def test_every_module_is_in_a_layer_and_imports_downwards() -> None:
    table = layers()
    table.setdefault("__init__", 0)  # the package's face: its version
    known = modules()
    upward = []
    for name, path in known.items():
        own = layer_of(name, table)
        for target in imports(path, known):
            if layer_of(target, table) > own:
                upward.append(f"{name} -> {target}")
    assert upward == [], "imports that go up a layer (docs/architecture.md)"


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_small(name: str) -> None:
    path = modules()[name]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path}: split it along its concerns"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{path}: functions over {MAX_FUNCTION_LINES} lines"
