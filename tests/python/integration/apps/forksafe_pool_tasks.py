"""The task run by multiprocessing / concurrent.futures workers, and the module the forkserver
preloads.

Importing this module uses forksafe (runtime, loop and fork-local client) in the importing
process: in the test process before it creates a fork-context pool, and in the forkserver
process when it is preloaded there, so the forkserver's children also fork from a process with
live forksafe threads.
"""

from __future__ import annotations

from typing import Any

from forksafe_probe import observe, use_at_import


def use_forksafe(value: str) -> dict[str, Any]:
    """Runs every probe in this process; returns what it saw."""
    return observe(value)


IMPORT_REPORT = use_at_import()
