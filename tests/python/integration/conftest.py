"""Integration tests: real servers and worker pools forking a process that already uses forksafe.

Every test is checked at teardown for processes it left behind (any live descendant of the test
process that was not there before the test): they are killed and the test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import integ_support
import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Python >= 3.12 warns when a multi-threaded process forks; these tests fork one on purpose.
    for item in items:
        if integ_support.HERE not in item.path.parents:
            continue
        item.add_marker(
            pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
        )


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fails the test if it leaves a live process below the test process."""
    me = os.getpid()
    before = integ_support.live_descendants(me)
    yield
    if integ_support.wait_until(lambda: not (integ_support.live_descendants(me) - before), 10):
        return
    left = integ_support.live_descendants(me) - before
    text = integ_support.describe(left)
    integ_support.kill_all(left)
    pytest.fail(f"the test left {len(left)} live process(es) behind (now killed):\n{text}")
