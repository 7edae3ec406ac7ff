"""Fixtures of the fork suite. The hang detector and the child work live in forkutil.py."""

from __future__ import annotations

from typing import Any

import forkutil
import pytest


@pytest.fixture
def parent_report() -> dict[str, Any]:
    """This process's own ``exercise()`` report, taken just before the test forks.

    It builds the parent's runtime, loop and fork-local client first, so every child inherits
    live state it must not use, and gives ``forkutil.check`` the parent's values to compare.
    """
    return forkutil.exercise_parent()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Python >= 3.12 warns when a multi-threaded process forks; this suite forks one on purpose.
    for item in items:
        item.add_marker(
            pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
        )
