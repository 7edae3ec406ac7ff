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
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NoReturn

from . import mechanism, options, printed
from .code import SETUP, BadInput, CodeWork, shorten, user_traceback
from .diagnosis import diagnose, trim_stack
from .engine import PATHS, Outcome, run_forks
from .native import threads as native_threads
from .report import Progress, columns, rate, render, summarise

COLUMNS = columns("path", "ok", "wrong", "hung", "crashed", "hangs_at_exit", "failed_of", "p50_ms")

PASSED, FAILED, BAD_INPUT, PARENT_BROKE = 0, 1, 2, 4
"""Exit status bits: 1 a path failed, 4 the parent broke after its children ran (5: both);
2 alone for bad input."""

BUDGET = 20.0
"""Default seconds ``check`` may spend raising the count on ok paths when a failure is racy."""

ENOUGH = 30
BOOST_CONCURRENCY = 8
"""Children at once while the count is raised: enough to be quick, few enough that a loaded
machine does not make slow children look stuck."""
"""Children a path is raised to at most: 0 failures in 30 bounds the failure rate below 1 in
10 with 95% confidence (the rule of three, 3/n)."""

_RACY_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL")
"""A crash by one of these from inherited native state depends on what the parent's threads
were doing at the fork: racy."""


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
        epilog="Exit status: 0 when every path is ok and the parent still works; bit 1 when "
        "a path failed, bit 4 when the parent broke after its children ran; 2 for bad input.",
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
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole check this many times (default 1)")  # fmt: skip
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="one child at a time, so that no two children use an inherited socket at once "
        "(costs up to a deadline per failing child)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=BUDGET,
        help="seconds to spend raising the count on ok paths when a failure is intermittent "
        f"or racy (default {BUDGET:g}; 0: never)",
    )
    args = parser.parse_args(argv)
    paths = options.chosen_paths(parser, args)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not args.budget >= 0:
        parser.error("--budget must be a number of seconds, 0 or more")
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


def _round(
    work: CodeWork,
    jobs: list[str],
    args: argparse.Namespace,
    outcomes: dict[str, list[Outcome]],
    deadline: float,
    concurrency: int | None = None,
) -> None:
    """Runs ``jobs`` (all at once, or one at a time with --isolate); adds their outcomes."""
    progress = Progress(len(jobs), sys.stderr.isatty() and not args.json)
    for outcome in run_forks(
        work,
        jobs,
        concurrency=1 if args.isolate else (concurrency or len(jobs)),
        depth=args.depth,
        deadline=deadline,
        on_tick=progress.tick,
        with_native=True,
    ):
        outcomes[outcome.path].append(outcome)
        progress.add(outcome)
    progress.clear()


def _racy(rows: list[dict[str, Any]], outcomes: dict[str, list[Outcome]]) -> list[str]:
    """Why the failures look racy: paths that failed in some children only, and crashes by a
    signal from inherited native state."""
    why = [
        f"{row['path']} failed {rate(row)}" for row in rows if 0 < row["failed"] < row["children"]
    ]
    for row in rows:
        crashes = [
            o for o in outcomes[row["path"]]
            if o.status == "crashed" and any(s in o.detail for s in _RACY_SIGNALS)
        ]  # fmt: skip
        if crashes and row["failed"] == row["children"] and row["children"] > 0:
            why.append(f"{row['path']} crashed by a signal (a crash like this is often racy)")
    return why


def _boost(
    work: CodeWork,
    args: argparse.Namespace,
    outcomes: dict[str, list[Outcome]],
    paths: list[str],
) -> dict[str, Any]:
    """Raises the count on the ok fork paths, doubling it each round up to :data:`ENOUGH`, with
    the full deadline and at most :data:`BOOST_CONCURRENCY` children at once. A round starts
    only if the time left in --budget covers what the last round took, scaled to its size
    (so a check costs at most the budget, plus a deadline if a raised child hangs)."""
    started = time.monotonic()
    added: dict[str, int] = {}
    per_child = 0.0
    while True:
        left = args.budget - (time.monotonic() - started)
        more = {
            name: min(len(outcomes[name]), ENOUGH - len(outcomes[name]))  # doubles the count
            for name in paths
            if not PATHS[name].fresh and all(o.status == "ok" for o in outcomes[name])
        }
        more = {name: n for name, n in more.items() if n > 0}
        jobs = [name for name, n in more.items() for _ in range(n)]
        if not jobs or per_child * len(jobs) / BOOST_CONCURRENCY > left or left <= 0:
            break
        began = time.monotonic()
        run_args = argparse.Namespace(**{**vars(args), "isolate": False})
        _round(work, jobs, run_args, outcomes, args.deadline, BOOST_CONCURRENCY)
        per_child = max(per_child, (time.monotonic() - began) * BOOST_CONCURRENCY / len(jobs))
        for name, n in more.items():
            added[name] = added.get(name, 0) + n
    return {"added": added, "seconds": round(time.monotonic() - started, 2)}


def _parent_again(work: CodeWork, deadline: float, on_hang: Callable[[dict[str, Any]], None]
                  ) -> dict[str, Any]:  # fmt: skip
    """Runs CODE once more in this process, after the children, under ``deadline``. A hang calls
    ``on_hang`` (from a watchdog thread) with the finding, which must end the process."""
    done = threading.Event()

    def watch() -> None:
        if done.wait(deadline):
            return
        with tempfile.TemporaryFile("w+") as dump:
            faulthandler.dump_traceback(file=dump, all_threads=True)
            dump.seek(0)
            # Without this watchdog's own thread (the dump's "Current thread").
            blocks = dump.read().split("\n\n")
            stack = trim_stack("\n\n".join(b for b in blocks if "Current thread" not in b))
        on_hang({
            "status": "hung",
            "detail": f"CODE did not return within {deadline:g} s in the parent, after the "
            "children ran (it returned before they did)",
            "stack": stack,
            "threads": [t.line() for t in native_threads(os.getpid())],
        })  # fmt: skip

    watchdog = threading.Thread(target=watch, name="forksafe-check-parent-again", daemon=True)
    watchdog.start()
    started = time.monotonic()
    try:
        try:
            value = work.evaluate()
        except BaseException as exc:
            return {
                "status": "raised",
                "detail": "CODE raised in the parent after the children ran:\n"
                + user_traceback(exc, [work.filename, SETUP]).rstrip(),
            }
        finally:
            done.set()
        shown = work.same(value)
        ms = round((time.monotonic() - started) * 1000, 2)
        if shown is None:
            return {"status": "ok", "ms": ms}
        return {
            "status": "wrong",
            "detail": f"CODE returned {shown} in the parent after the children ran; before "
            f"them it returned {work.expected_repr}",
            "ms": ms,
        }
    finally:
        watchdog.join()


def _indented(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _parent_lines(finding: dict[str, Any]) -> list[str]:
    if finding["status"] == "ok":
        return ["", "the parent after its children: CODE still works"]
    first, *rest = finding["detail"].splitlines()
    lines = ["", f"THE PARENT BROKE AFTER ITS CHILDREN RAN: {first}"]
    lines += [_indented(line, "    ") for line in rest]
    lines += _wrap_text(
        "A child used something it shares with the parent (an inherited socket, an epoll or "
        "other fd, a shared file offset, a lock file) in a way that broke it for the parent. "
        "Build such state per process (forksafe.fork_local(factory); in Rust "
        "forksafe::ForkLocal::with_init), and never close, shut down or re-register an "
        "inherited descriptor in the child."
    )
    if finding.get("threads"):
        lines.append("  native threads:")
        lines += [f"    {line}" for line in finding["threads"]]
    if finding.get("stack"):
        lines.append("  Python stacks of the parent:")
        lines.append(_indented(finding["stack"], "    "))
    return lines


def _wrap_text(text: str) -> list[str]:
    # Never inside an option or a path ("--no-compare", "forksafe::ForkLocal::with_init").
    return textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="  ",
                         break_on_hyphens=False, break_long_words=False)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the exit status bits of :data:`FAILED` and :data:`PARENT_BROKE`, or
    :data:`BAD_INPUT`."""
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
        return BAD_INPUT
    shown = shorten(work.expect(value))
    if not args.json:
        if "\n" in shown:  # a multi-line value: in its own block, the time before it
            print(f"parent: CODE returned in {parent_ms:.1f} ms:\n{_indented(shown)}", flush=True)
        else:
            print(f"parent: CODE returned {shown} in {parent_ms:.1f} ms", flush=True)

    # A fresh interpreter inherits nothing: one is enough for the comparison.
    jobs = [name for name in paths for _ in range(1 if PATHS[name].fresh else args.count)]
    outcomes: dict[str, list[Outcome]] = {name: [] for name in paths}
    began = time.monotonic()
    for _ in range(args.repeat):
        _round(work, jobs, args, outcomes, args.deadline)
    rows = [summarise(name, outcomes[name]) for name in paths]
    racy = _racy(rows, outcomes)
    boosted: dict[str, Any] = {"added": {}, "seconds": 0.0}
    if racy and args.budget > 0:
        boosted = _boost(work, args, outcomes, paths)
        rows = [summarise(name, outcomes[name]) for name in paths]
    elapsed = time.monotonic() - began
    passed = all(row["ok"] == row["forks"] for row in rows)
    status = PASSED if passed else FAILED
    confidence = _confidence(racy, boosted, rows, args)
    findings = mechanism.name(rows, outcomes)
    report: dict[str, Any] = {
        "parent": {"repr": shown, "ms": round(parent_ms, 2)},
        "rows": rows,
        "outcomes": [o.as_dict() for name in paths for o in outcomes[name]],
        "racy": racy,
        "boosted": boosted,
        "confidence": confidence,
        "mechanism": findings,
        "printed": printed.grouped(outcomes),
        "seconds": round(elapsed, 2),
        "passed": passed,
    }
    processes = sum(row["forks"] for row in rows)
    if passed:
        last = f"\nevery path ok: {processes} processes in {elapsed:.1f} s"
    else:
        failing = [row["path"] for row in rows if row["ok"] != row["forks"]]
        last = f"\nFAILED on {', '.join(failing)} ({processes} processes in {elapsed:.1f} s)"
    if not args.json:
        print(render(rows, COLUMNS))
        for line in findings:
            print("\n".join(_wrap_text(line)).replace("  ", "", 1))
        for line in confidence:
            print("\n".join(_wrap_text(line)).replace("  ", "", 1))
        if not passed:
            print(diagnose(rows, outcomes))
        for line in printed.render(outcomes):
            print(line)
        sys.stdout.flush()

    out = sys.stdout  # CODE's own output goes to stderr; a hang finishes from the watchdog

    def finish(parent: dict[str, Any]) -> int:
        code = status | (PARENT_BROKE if parent["status"] != "ok" else 0)
        if args.json:
            print(json.dumps({**report, "parent_after": parent, "status": code}), file=out)
        else:
            print("\n".join(_parent_lines(parent)), file=out)
            broke = code & PARENT_BROKE
            print(last + ("; but the parent broke after its children ran" if broke else ""),
                  file=out)  # fmt: skip
        # From the watchdog, sys.stdout is still redirected to stderr: flush the real one here,
        # before leave() exits without Python's own flush.
        out.flush()
        return code

    def hung(parent: dict[str, Any]) -> None:
        leave(finish(parent))  # from the watchdog: CODE still runs in the main thread

    with contextlib.redirect_stdout(sys.stderr):
        parent = _parent_again(work, args.deadline, hung)
    return finish(parent)


def _confidence(
    racy: list[str], boosted: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace
) -> list[str]:
    """What the counts are worth, and what was done about it."""
    if not racy:
        return []
    ok = [row for row in rows if not PATHS[row["path"]].fresh and row["failed"] == 0]
    lines = [
        f"Racy: {'; '.join(racy)}. An ok row at {args.count * args.repeat} children is weak "
        "evidence: the same hazard may fire on it in another run."
    ]
    added = boosted["added"]
    if added:
        now = ", ".join(f"{row['path']} {rate(row)}" for row in rows if row["path"] in added)
        lines.append(
            f"Raised the count on the ok paths within --budget {args.budget:g} s "
            f"({boosted['seconds']:.1f} s spent; at most {ENOUGH} children a path, where 0 "
            f"failures bound the rate below 1 in 10): now {now} failed."
        )
    elif args.budget <= 0:
        lines.append("The count was not raised (--budget 0): use --count or --repeat.")
    elif ok:
        lines.append(f"--budget {args.budget:g} s was too short to raise the count.")
    return lines


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
