"""The report header (the fork warnings' filter is in pyproject.toml). The hang detector is
forksafe's own fork engine (``forksafe._cli.engine.calls``), installed with forksafe."""

from __future__ import annotations

import os

import forksafe_pyo3_025


def pytest_report_header() -> list[str]:
    build = "CONTROL: plain pyo3_async_runtimes::tokio" if forksafe_pyo3_025.CONTROL else "forksafe"
    return [
        f"forksafe_pyo3_025: {forksafe_pyo3_025.__file__} ({build})",
        f"FORKSAFE_PID_CHECK={os.environ.get('FORKSAFE_PID_CHECK', '(unset)')}",
    ]
