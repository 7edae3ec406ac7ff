"""The tree keeps one fork harness and one fork vocabulary.

- The Python test code forks only through the engine (``python/forksafe/_cli/engine/``): no
  ``os.fork``, ``ctypes`` fork or ``clone`` system call in tests/ or the examples' tests.
- forkutil enumerates the engine's rows and names no path itself.
- Nothing edits ``sys.path``, and no example imports a module of tests/.
- The old fork vocabulary (the method names the engine's paths replaced) stays out of the tree.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import forkutil
import pytest
from forksafe._cli.engine import paths

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()

FORKING_CALLS = {"fork", "forkpty", "syscall", "clone"}
"""Attribute calls that start a process by hand (``os.fork()``, ``libc.fork()``, ...)."""
RAW_LIBRARIES = {"PyDLL", "CDLL"}
"""What a hand-made C-level fork or clone goes through."""

# Built from pieces, so that this file does not match itself.
OLD_WORDS = [
    r"\bc" + "-fork" + r"\b",
    r"\braw" + "-syscall" + r"\b",
    r"\bmp" + "-fork" + r"\b",
    "[\"']os" + r"\.fork" + "[\"']",  # a path named "os.fork" (the row is os_fork)
    r"\bmetho" + r"d=(?![\"'])",  # method=path (an HTTP method="GET" is another thing)
    "parametrize\\(\\s*[\"']metho" + "d[\"']",
    r"\bMETHO" + r"DS\b",
]


def _tracked() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): cannot list the tree's files")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def _python(under: list[str]) -> Iterator[Path]:
    for path in _tracked():
        relative = path.relative_to(ROOT).as_posix()
        if path.suffix == ".py" and any(relative.startswith(top) for top in under):
            if path.exists():
                yield path


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), str(path))


def _test_code() -> list[Path]:
    return [
        path for path in _python(["tests/", "examples/"]) if "tests" in path.relative_to(ROOT).parts
    ]


def test_test_code_forks_only_through_the_engine() -> None:
    found = []
    for path in _test_code():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in FORKING_CALLS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.func.attr}()")
            if isinstance(node, (ast.Attribute, ast.Name)):
                name = node.attr if isinstance(node, ast.Attribute) else node.id
                if name in RAW_LIBRARIES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert found == [], "forks outside the engine (use forkutil / engine.calls):\n" + "\n".join(
        found
    )


def test_forkutil_enumerates_the_engines_rows() -> None:
    assert forkutil.PATHS == tuple(row.name for row in paths.ROWS if not row.fresh)
    named = sorted(
        node.value
        for node in ast.walk(_tree(Path(forkutil.__file__)))
        if isinstance(node, ast.Constant) and node.value in paths.PATHS
    )
    assert named == [], f"forkutil names fork paths itself: {named}"


def test_nothing_edits_sys_path() -> None:
    found = []
    for path in _python(["tests/", "examples/", "benches/", "python/", "scripts/"]):
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], "sys.path used (import by name, or pass PYTHONPATH):\n" + "\n".join(found)


def test_no_example_imports_from_tests() -> None:
    ours = {path.stem for path in _python(["tests/"])}
    found = []
    for path in _python(["examples/"]):
        local = {p.stem for p in path.parent.glob("*.py")}  # the example's own modules
        for node in ast.walk(_tree(path)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if (top in ours and top not in local) or top == "tests":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert found == [], "examples import the repository's tests:\n" + "\n".join(found)


def test_the_old_fork_vocabulary_is_gone() -> None:
    patterns = [re.compile(word) for word in OLD_WORDS]
    found = []
    for path in _tracked():
        if path == HERE or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            for pattern in patterns:
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert found == [], "old fork path names (use the engine's: os_fork, c_fork...):\n" + (
        "\n".join(found)
    )
