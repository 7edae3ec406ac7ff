"""``python -m forksafe stress|doctor``."""

from __future__ import annotations

import sys


def main() -> int:
    """Dispatches to the subcommand."""
    usage = "usage: python -m forksafe {stress,doctor} [options]  (--help on each)"
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage)
        return 0 if len(sys.argv) >= 2 else 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "stress":
        from ._stress import main as stress

        return stress(rest)
    if command == "doctor":
        from ._doctor import main as doctor

        return doctor(rest)
    print(f"unknown command {command!r}\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
