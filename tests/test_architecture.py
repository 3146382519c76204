"""Imports run down only: every import between folders of ``src/fluxserve`` is one that the
floors table in ``docs/architecture.md`` allows, and no two folders import each other.

The import graph counts module-level and nested imports (inside functions, under
``if TYPE_CHECKING:``) alike, with relative imports resolved."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fluxserve"
DOC = ROOT / "docs" / "architecture.md"

# Imports that break the table today, each with its reason: work still to do, not rules.
# (importing module, imported folder)
EXCEPTIONS: dict[tuple[str, str], str] = {}


def floors() -> dict[str, tuple[int, frozenset[str]]]:
    """folder -> (floor, the folders it may import), read from the doc's table."""
    table: dict[str, tuple[int, frozenset[str]]] = {}
    section = DOC.read_text().split("## Floors", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        folder = cells[1].strip("`")
        table[folder] = (int(cells[0]), frozenset(re.findall(r"`([^`]+)`", cells[3])))
    return table


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def folder_of(module: str) -> str:
    """``fluxserve.jobs.worker`` -> ``jobs``; the package root is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of fluxserve code."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found: list[tuple[str, str, int]] = []
    for name, path in sorted(modules.items()):
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "fluxserve"]
                found += [(name, n, node.lineno) for n in names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "fluxserve":
                    continue
                for alias in node.names:  # ``from fluxserve import web`` imports a folder
                    full = f"{target}.{alias.name}"
                    found.append((name, full if full in modules else target, node.lineno))
    return found


def test_the_floors_table_runs_down() -> None:
    table = floors()
    assert len(table) > 10, "the floors table in docs/architecture.md was not found"
    for folder, (floor, allowed) in table.items():
        for other in allowed:
            assert other in table, f"{folder} may import {other}, which has no row"
            assert table[other][0] < floor, f"{folder} (floor {floor}) may import {other}, not lower"


def test_every_folder_has_a_row() -> None:
    table = floors()
    folders = {folder_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    missing = sorted(folders - table.keys())
    assert not missing, f"add these folders to the floors table in docs/architecture.md: {missing}"


def test_imports_run_down() -> None:
    table = floors()
    wrong = []
    used = set()
    for source, target, line in imports():
        mine, theirs = folder_of(source), folder_of(target)
        if mine == theirs or theirs in table.get(mine, (0, frozenset()))[1]:
            continue
        if (source, theirs) in EXCEPTIONS:
            used.add((source, theirs))
            continue
        wrong.append(f"{source}:{line} imports {target} ({mine} may not import {theirs})")
    assert not wrong, "imports the floors table does not allow:\n" + "\n".join(wrong)
    stale = sorted(set(EXCEPTIONS) - used)
    assert not stale, f"exceptions no longer needed (remove them): {stale}"


def test_no_cycles_between_folders() -> None:
    edges: dict[str, set[str]] = {}
    for source, target, _ in imports():
        mine, theirs = folder_of(source), folder_of(target)
        if mine != theirs and (source, theirs) not in EXCEPTIONS:
            edges.setdefault(mine, set()).add(theirs)
    done: set[str] = set()

    def visit(folder: str, path: list[str]) -> None:
        if folder in path:
            raise AssertionError("folders import each other: " + " -> ".join(path + [folder]))
        if folder in done:
            return
        for other in sorted(edges.get(folder, ())):
            visit(other, path + [folder])
        done.add(folder)

    for folder in sorted(edges):
        visit(folder, [])
