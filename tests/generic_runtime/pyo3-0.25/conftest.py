"""The repository's fork helpers (tests/python/forkutil.py: the hang detector) on sys.path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT / "tests" / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "python"))

import forksafe_pyo3_025  # noqa: E402


def pytest_report_header() -> list[str]:
    build = "CONTROL: plain pyo3_async_runtimes::tokio" if forksafe_pyo3_025.CONTROL else "forksafe"
    return [
        f"forksafe_pyo3_025: {forksafe_pyo3_025.__file__} ({build})",
        f"FORKSAFE_PID_CHECK={os.environ.get('FORKSAFE_PID_CHECK', '(unset)')}",
    ]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Python >= 3.12 warns when a multi-threaded process forks; these tests fork one on purpose.
    for item in items:
        item.add_marker(
            pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
        )
