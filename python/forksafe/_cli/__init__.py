"""The tool, ``python -m forksafe check|stress|doctor``: separate from the library, which never
imports it.

- :mod:`.check`: does *your* code survive fork? (:mod:`.code` runs it, :mod:`.diagnosis`
  explains its failures);
- :mod:`.stress`: forksafe's own probes (:mod:`.probes`) on every fork path;
- :mod:`.doctor`: what this platform gives forksafe, verified by real forks;
- :mod:`.options`, :mod:`.report`: the options and the table they share;
- :mod:`.engine`: the fork engine under all three.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

USAGE = "usage: python -m forksafe {check,stress,doctor} [options]  (--help on each)"


def main(argv: Sequence[str]) -> NoReturn:
    """Runs the subcommand ``argv[0]`` with the rest of ``argv``, and exits with its status."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "check":
        from . import check

        check.leave(check.main(rest))
    if command == "stress":
        from . import stress

        sys.exit(stress.main(rest))
    if command == "doctor":
        from . import doctor

        sys.exit(doctor.main(rest))
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    sys.exit(2)
