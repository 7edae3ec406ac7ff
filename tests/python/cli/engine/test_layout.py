"""The engine's layout keeps its promises: the child side imports nothing of the parent side,
and code asks a fork path's row, never its name."""

from __future__ import annotations

import ast
from pathlib import Path

import forksafe._cli
from forksafe._cli.engine import FORK_PATHS, FRESH_PATHS, PATHS

TOOL = Path(forksafe._cli.__file__).resolve().parent
CHILD_SIDE = {"events", "paths"}
"""What engine/child.py may import from the engine: the wire format and the path rows."""


def _imports(path: Path) -> set[str]:
    """The modules a file imports (relative ones as their last name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                names.update([node.module] if node.module else [a.name for a in node.names])
            else:
                names.add(node.module or "")
    return names


def test_the_child_side_imports_nothing_of_the_parent_side() -> None:
    imported = _imports(TOOL / "engine" / "child.py")
    ours = {name for name in imported if name.startswith("forksafe") or "." not in name}
    engine_modules = {p.stem for p in (TOOL / "engine").glob("*.py")}
    assert imported & engine_modules <= CHILD_SIDE, imported
    assert not any(name.startswith("forksafe") for name in ours), imported


def test_one_row_per_path_and_the_names_only_there() -> None:
    assert list(PATHS) == [*FORK_PATHS, *FRESH_PATHS]
    for name, row in PATHS.items():
        assert row.name == name and row.hint, row
        assert (row.fork is None) == (row.context is not None), row  # one way to start it
        assert not (row.fresh and row.fork is not None), row  # only multiprocessing spawns
    # Nowhere else in the tool does code compare or look up a path by its name.
    for source in TOOL.rglob("*.py"):
        if source.name == "paths.py":
            continue
        tree = ast.parse(source.read_text(), str(source))
        named = sorted(
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in PATHS
        )
        assert named == [], f"{source.relative_to(TOOL)} names fork paths {named}"
