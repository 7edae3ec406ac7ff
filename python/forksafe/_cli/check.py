"""``python -m forksafe check CODE``: does *your* code survive fork, and on which fork paths?

CODE runs once in this process (after ``--setup``), which warms whatever your libraries build:
runtimes, pools, threads, clients. The fork engine (:mod:`.engine`, the one ``stress`` uses)
then forks children by every path and starts a ``forkserver`` and a ``spawn`` worker for
comparison; each runs CODE again under a deadline, is compared with the parent's value (by
``repr``), and then leaves through the interpreter's normal exit, under the same deadline again.
While a child exits, a profile hook reports each exit step as it starts, so a hang names the
handler that was running, whoever registered it. What CODE is and how it runs: :mod:`.code`;
what the report says about a failure: :mod:`.diagnosis`.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import NoReturn

from . import options
from .code import SETUP, BadInput, CodeWork, shorten, user_traceback
from .diagnosis import diagnose
from .engine import PATHS, Outcome, run_forks
from .report import Progress, columns, render, summarise

COLUMNS = columns("path", "ok", "wrong", "hung", "crashed", "hangs_at_exit", "p50_ms")


@contextlib.contextmanager
def _parent_deadline(limit: float) -> Iterator[None]:
    """Ends this process with exit status 2 if the parent run takes longer than ``limit``."""
    done = threading.Event()

    def watch() -> None:
        if done.wait(limit):
            return
        sys.stderr.write(
            f"error: CODE did not finish in the parent within {limit:g} s (no fork involved "
            "yet). Python stacks:\n"
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(2)

    # Joined before any fork: a C-level fork while another thread waits for the GIL (or, on a
    # free-threaded build, is attached to the interpreter) can deadlock the child.
    watchdog = threading.Thread(target=watch, name="forksafe-check-watchdog", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str], CodeWork]:
    parser = argparse.ArgumentParser(
        prog="python -m forksafe check",
        description="Run CODE once here, then fork by every path (and start a forkserver and a "
        "spawn worker for comparison); run CODE again in each child under a deadline, and "
        "report the paths where it hangs, crashes, returns something else or cannot exit.",
        epilog="Exit status: 0 when every path is ok, 1 otherwise, 2 for bad input.",
    )
    parser.add_argument("code", nargs="?", help="Python code; the value of its last expression "
                        "is compared with the parent's")  # fmt: skip
    parser.add_argument("--file", help="read CODE from this script instead")
    parser.add_argument("--setup", default="", help="code run once in the parent, before CODE")
    options.fork_options(
        parser,
        count=3,
        depth=2,
        paths=tuple(PATHS),
        per="seconds each child gets for its result, and again to exit (default 10)",
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="do not compare the children's values by repr"
    )
    args = parser.parse_args(argv)
    paths = options.chosen_paths(parser, args)
    if (args.code is None) == (args.file is None):
        parser.error("give CODE or --file (one of them)")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as script:
                code, filename = script.read(), args.file
        except OSError as exc:
            parser.error(f"cannot read --file {args.file}: {exc.strerror or exc}")
    else:
        code, filename = args.code, "<CODE>"
    return args, paths, CodeWork(code, filename, args.setup, compare=not args.no_compare)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every path is ok, 1 otherwise, 2 for bad input."""
    args, paths, work = _arguments(argv)
    limit = max(60.0, 6 * args.deadline)
    try:
        work.compile()
        with _parent_deadline(limit), contextlib.redirect_stdout(sys.stderr):
            work.start()
            started = time.monotonic()
            try:
                value = work.evaluate()
            except BaseException as exc:
                raise BadInput(
                    "CODE raised in the parent, so there is nothing to compare the children "
                    "with:\n" + user_traceback(exc, [work.filename, SETUP])
                ) from None
            parent_ms = (time.monotonic() - started) * 1000
    except BadInput as exc:
        print(f"error: {exc}".rstrip(), file=sys.stderr)
        return 2
    shown = shorten(work.expect(value))
    if not args.json:
        print(f"parent: CODE returned {shown} in {parent_ms:.1f} ms", flush=True)

    # A fresh interpreter inherits nothing: one is enough for the comparison.
    jobs = [name for name in paths for _ in range(1 if PATHS[name].fresh else args.count)]
    progress = Progress(len(jobs), sys.stderr.isatty() and not args.json)
    outcomes: dict[str, list[Outcome]] = {name: [] for name in paths}
    began = time.monotonic()
    for outcome in run_forks(
        work,
        jobs,
        concurrency=len(jobs),
        depth=args.depth,
        deadline=args.deadline,
        on_tick=progress.tick,
    ):
        outcomes[outcome.path].append(outcome)
        progress.add(outcome)
    progress.clear()
    elapsed = time.monotonic() - began
    rows = [summarise(name, outcomes[name]) for name in paths]
    passed = all(row["ok"] == row["forks"] for row in rows)
    if args.json:
        print(json.dumps({
            "parent": {"repr": shown, "ms": round(parent_ms, 2)},
            "rows": rows,
            "outcomes": [o.as_dict() for name in paths for o in outcomes[name]],
            "seconds": round(elapsed, 2),
            "passed": passed,
        }))  # fmt: skip
    else:
        print(render(rows, COLUMNS))
        processes = sum(row["forks"] for row in rows)
        if passed:
            print(f"\nevery path ok: {processes} processes in {elapsed:.1f} s")
        else:
            print(diagnose(rows, outcomes))
            failing = [row["path"] for row in rows if row["ok"] != row["forks"]]
            print(f"\nFAILED on {', '.join(failing)} ({processes} processes in {elapsed:.1f} s)")
    return 0 if passed else 1


def leave(code: int) -> NoReturn:
    """Leaves without running the exit hooks of the code ``check`` ran here: they belong to what
    is being checked, and one that hangs must not hang the checker."""
    sys.stdout.flush()
    sys.stderr.flush()
    from multiprocessing import forkserver, resource_tracker

    # Stop (and reap) the helpers the forkserver and spawn workers started.
    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(helper, "_stop", None)
        if callable(stop):
            stop()
    os._exit(code)
