"""The type stubs match the runtime modules, and ``forksafe.__all__`` is real."""

from __future__ import annotations

import ast
from pathlib import Path

import forksafe
import forksafe.testing

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "forksafe"

# Native functions compiled only into test builds, deliberately absent from the stubs.
TEST_ONLY = {"call_in_block_on", "call_on_worker", "control_echo", "panic"}


def _stub_names(body: list[ast.stmt]) -> tuple[set[str], dict[str, set[str]]]:
    """Top-level names a stub declares (not imports, not TypeVars), and each class's members."""
    names: set[str] = set()
    classes: dict[str, set[str]] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            members, _ = _stub_names(node.body)
            classes[node.name] = members
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            value = node.value
            is_typevar = (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id == "TypeVar"
            )
            if not is_typevar:
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names, classes


def _parse(name: str) -> tuple[set[str], dict[str, set[str]]]:
    path = PACKAGE / name
    assert path.is_file(), f"missing stub {path}"
    return _stub_names(ast.parse(path.read_text(), filename=str(path)).body)


def _public(module: object) -> set[str]:
    return {name for name in dir(module) if not name.startswith("_")}


def test_native_stub_matches_the_extension_module() -> None:
    names, classes = _parse("_native.pyi")
    assert {"process_token", "runtime_info", "configure", "testing"} <= names
    native = forksafe._native
    missing = sorted(name for name in names if not hasattr(native, name))
    assert missing == [], f"declared in _native.pyi but missing at runtime: {missing}"
    probes = native.testing
    assert set(classes["testing"]) == {"echo", "sleep", "pid", "echo_sync"}
    missing = sorted(name for name in classes["testing"] if not hasattr(probes, name))
    assert missing == [], f"declared in _native.pyi's testing but missing at runtime: {missing}"
    for name in classes["testing"]:
        assert callable(getattr(probes, name)), name
    # And the other way: nothing public at runtime is missing from the stub.
    undeclared = sorted(_public(native) - names - {"CONTROL_PROBE", "testing"})
    assert undeclared == [], f"public in forksafe._native but not in _native.pyi: {undeclared}"
    undeclared = sorted(_public(probes) - classes["testing"] - TEST_ONLY)
    assert undeclared == [], f"public in _native.testing but not in _native.pyi: {undeclared}"


def test_testing_stub_matches_the_testing_module() -> None:
    names, classes = _parse("testing.pyi")
    assert classes == {}
    assert names == {"echo", "sleep", "pid", "echo_sync"}
    for name in names:
        assert callable(getattr(forksafe.testing, name)), name
    assert set(forksafe.testing.__all__) == names
    assert forksafe.testing is forksafe.__dict__["testing"]


def test_every_name_in_all_exists() -> None:
    assert forksafe.__all__, "forksafe.__all__ is empty"
    missing = [name for name in forksafe.__all__ if not hasattr(forksafe, name)]
    assert missing == []
    assert len(set(forksafe.__all__)) == len(forksafe.__all__)
    namespace: dict[str, object] = {}
    exec("from forksafe import *", namespace)
    assert set(forksafe.__all__) <= set(namespace)


def test_stubs_ship_in_the_installed_package() -> None:
    installed = Path(forksafe.__file__).resolve().parent
    for name in ("_native.pyi", "testing.pyi", "py.typed"):
        assert (installed / name).is_file(), f"{name} is not installed next to {installed}"
