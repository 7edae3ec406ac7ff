"""``python -m forksafe doctor --cargo``: names the crate that turns on tokio's fork-unsafe
features, with its path from the extension (tests/doctor-tree: ext -> mid -> leaf, where the
leaf asks tokio for "full" as lance-namespace-impls does in LanceDB's tree).

Resolution is offline (``CARGO_NET_OFFLINE``), as a maintainer's machine resolves a tree it has
built: the module's fixture fetches the tree's locked crates first (tokio "full" pulls in crates
the root workspace never builds, such as signal-hook-registry, so a fresh machine lacks them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TREE = ROOT / "tests" / "doctor-tree"


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "CARGO_NET_OFFLINE": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "forksafe", "doctor", "--cargo", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=full,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def _needs_cargo() -> None:
    if shutil.which(os.environ.get("CARGO", "cargo")) is None:
        # CI's parking-lot job runs these with cargo and FORKSAFE_REQUIRE_CARGO=1; elsewhere
        # (a chroot with only a CPython) they skip, saying why.
        if os.environ.get("FORKSAFE_REQUIRE_CARGO", "") not in ("", "0"):
            pytest.fail("FORKSAFE_REQUIRE_CARGO is set but cargo is not on PATH")
        pytest.skip("cargo is not on PATH: doctor --cargo's tests need it")


@pytest.fixture(scope="module", autouse=True)
def _fetched(_needs_cargo: None) -> None:
    """The tree's locked crates in the local registry, so that offline resolution can succeed."""
    cargo = os.environ.get("CARGO", "cargo")
    manifest = str(TREE / "Cargo.toml")
    fetch = subprocess.run(
        [cargo, "fetch", "--locked", "--manifest-path", manifest],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert fetch.returncode == 0, f"cargo fetch of {manifest} failed:\n{fetch.stderr}"


def test_names_the_crate_that_asks_tokio_for_full_and_its_path() -> None:
    result = doctor(str(TREE / "ext" / "Cargo.toml"))
    assert result.returncode == 1, result
    out = result.stdout
    for feature in ("parking_lot", "signal", "process"):
        assert f"{feature}: ON, turned on by:" in out, out
    assert out.count("doctor-leaf 0.0.0 (asks tokio for: full)") == 3, out
    assert out.count("path: doctor-ext -> doctor-mid -> doctor-leaf") == 3, out
    assert "doctor-ext 0.0.0" not in out, "the extension's own tokio asks for none of them"


def test_json_lists_each_enabler() -> None:
    import json

    result = doctor(str(TREE / "ext" / "Cargo.toml"), "--json")
    assert result.returncode == 1, result
    (tokio,) = json.loads(result.stdout)
    enablers = {(e["feature"], e["crate"], tuple(e["path"])) for e in tokio["enablers"]}
    path = ("doctor-ext", "doctor-mid", "doctor-leaf")
    assert enablers == {(f, "doctor-leaf", path) for f in ("parking_lot", "signal", "process")}


def test_a_clean_tree_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lib.rs").write_text("")
    (tmp_path / "Cargo.toml").write_text(
        '[package]\nname = "clean-ext"\nversion = "0.0.0"\nedition = "2021"\n\n'
        '[dependencies]\ntokio = { version = "1.54", default-features = false, '
        'features = ["rt-multi-thread", "net", "time"] }\n\n[workspace]\n'
    )
    shutil.copy(TREE / "Cargo.lock", tmp_path / "Cargo.lock")
    result = doctor(str(tmp_path / "Cargo.toml"))
    assert result.returncode == 0, result
    assert "parking_lot: off" in result.stdout, result.stdout


def test_a_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    result = doctor(str(tmp_path / "nope" / "Cargo.toml"))
    assert result.returncode == 2, result
    assert "no such Cargo.toml" in result.stderr, result.stderr


def test_a_manifest_that_does_not_resolve_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text('[package]\nname = "broken"\nversion = \n')
    result = doctor(str(tmp_path / "Cargo.toml"))
    assert result.returncode == 2, result
    assert "cargo metadata failed" in result.stderr, result.stderr


def test_a_missing_cargo_is_a_clear_error() -> None:
    result = doctor(str(TREE / "ext" / "Cargo.toml"), env={"CARGO": "/nonexistent/cargo"})
    assert result.returncode == 2, result
    assert "cargo not found" in result.stderr, result.stderr
