"""``python -m forksafe check|stress|doctor``."""

from __future__ import annotations

import os
import sys

USAGE = "usage: python -m forksafe {check,stress,doctor} [options]  (--help on each)"


def main() -> int:
    """Dispatches to the subcommand."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(USAGE)
        return 0 if len(sys.argv) >= 2 else 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "check":
        from ._check import main as check

        return check(rest)
    if command == "stress":
        from ._stress import main as stress

        return stress(rest)
    if command == "doctor":
        from ._doctor import main as doctor

        return doctor(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


def _leave(code: int) -> None:
    """Leaves without running the exit hooks of the code ``check`` ran here: they belong to what
    is being checked, and one that hangs must not hang the checker."""
    sys.stdout.flush()
    sys.stderr.flush()
    from multiprocessing import forkserver, resource_tracker

    # Stop (and reap) the helpers the forkserver and spawn workers started.
    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):  # type: ignore[attr-defined]
        stop = getattr(helper, "_stop", None)
        if callable(stop):
            stop()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        _leave(code)
    sys.exit(code)
