"""The report header and the fork warnings' filter. The hang detector is forksafe's own fork
engine (``forksafe._cli.engine.calls``), installed with forksafe."""

from __future__ import annotations

import os

import forksafe_pyo3_025
import pytest


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
