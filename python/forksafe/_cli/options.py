"""The command-line options ``check`` and ``stress`` share, and their validation."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .engine import PATHS


def fork_options(
    parser: argparse.ArgumentParser, *, count: int, depth: int, paths: Sequence[str], per: str
) -> None:
    """Adds ``--count``, ``--depth``, ``--paths`` (alias ``--methods``), ``--deadline`` and
    ``--json`` with these defaults; ``per`` says what ``--deadline`` applies to."""
    default = "all" if tuple(paths) == tuple(PATHS) else ",".join(paths)
    parser.add_argument(
        "--count",
        type=int,
        default=count,
        help=f"children (nested: chains) per fork path (default {count})",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=depth,
        help=f"generations per chain for 'nested' (default {depth})",
    )
    parser.add_argument(
        "--paths",
        "--methods",
        dest="paths",
        default=",".join(paths),
        help=f"comma-separated subset of {','.join(PATHS)} (default: {default}); "
        "--methods is an alias",
    )
    parser.add_argument("--deadline", type=float, default=10.0, help=per)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def chosen_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Validates the shared options (argparse's exit 2 with a message when wrong); returns the
    chosen paths, in the order given."""
    paths = [name.strip() for name in args.paths.split(",") if name.strip()]
    unknown = [name for name in paths if name not in PATHS]
    if unknown or not paths:
        parser.error(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    for name in ("count", "depth", "concurrency"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.deadline > 0:
        parser.error("--deadline must be a positive number of seconds")
    return paths
