"""The fork engine of ``python -m forksafe check``, ``stress`` and ``doctor``.

- :mod:`.paths`: one row per fork path, and how to start it;
- :mod:`.events`: the wire format between a child and the parent;
- :mod:`.child`: everything that runs after the fork (it imports nothing of the parent side);
- :mod:`.parent`: launches, one handler per event, deadlines, stack dumps, kills;
- :mod:`.outcome`: the verdict of each process.
"""

from .child import Work
from .outcome import KINDS, Outcome, ProcessReport
from .parent import run_forks, thread_names
from .paths import FORK_PATHS, FRESH_PATHS, PATHS, ForkPath

__all__ = [
    "FORK_PATHS",
    "FRESH_PATHS",
    "KINDS",
    "PATHS",
    "ForkPath",
    "Outcome",
    "ProcessReport",
    "Work",
    "run_forks",
    "thread_names",
]
