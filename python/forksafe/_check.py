"""``python -m forksafe check CODE``: does *your* code survive fork, and on which fork paths?

CODE runs once in this process (after ``--setup``), which warms whatever your libraries build:
runtimes, pools, threads, clients. The fork engine (``_forks``, the one ``stress`` uses) then
forks children by every path and starts a ``forkserver`` and a ``spawn`` worker for comparison;
each runs CODE again under a deadline, is compared with the parent's value (by ``repr``), and
then leaves through the interpreter's normal exit, under the same deadline again.

atexit has no public way to list its handlers. check records them: before ``--setup`` runs it
wraps ``atexit.register`` and ``atexit.unregister`` (children inherit the wrapper), so it can
name every handler your code registers; ``atexit._ncallbacks()`` counts the ones registered
before (by the standard library or by forksafe's own imports), which it reports as a number.
While a child exits, a profile hook also reports each exit step as it starts, so a hang names
the handler that was running, whoever registered it.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import faulthandler
import hashlib
import json
import linecache
import os
import re
import sys
import textwrap
import threading
import time
import traceback
import types
from collections.abc import Iterator, Sequence
from typing import Any, Callable

from ._forks import FORK_PATHS, FRESH_PATHS, KINDS, PATHS, Outcome, Work, run_forks
from ._table import Column, Progress, render, summarise

MODULE = "__check__"
"""The module CODE and ``--setup`` run in (so functions they define pickle by reference)."""

COLUMNS = (
    Column("path", "method", 12),
    Column("ok", "ok", 5),
    Column("wrong", "wrong", 6),
    Column("hung", "hung", 5),
    Column("crashed", "crashed", 8),
    Column("hangs-at-exit", "hangs_at_exit", 14),
    Column("p50 ms", "p50_ms", 9),
)

_REPR_LIMIT = 2000

PATH_HINT = {
    "os_fork": "os.fork(): gunicorn --preload workers, celery prefork, PySpark workers",
    "mp_fork": "multiprocessing's fork start method (Pool, Process, PyTorch DataLoader "
    "workers); get_context('forkserver') or 'spawn' does not inherit threads",
    "c_fork": "a C-level fork() that skips Python's fork handling: uWSGI workers (uWSGI's "
    "--lazy-apps loads the app in each worker, after the fork)",
    "raw_syscall": "a raw clone system call that skips every fork handler, C and Python",
    "thread_fork": "os.fork() called from a thread other than the main thread",
    "nested": "a forked child that forks again (a DataLoader inside a celery task)",
    "forkserver": "a fresh interpreter (setup, then CODE): this fails without any fork, so it is "
    "not a fork problem (or --setup lacks what CODE needs)",
    "spawn": "a fresh interpreter (setup, then CODE): this fails without any fork, so it is not "
    "a fork problem (or --setup lacks what CODE needs)",
}

MEANING = {
    "hung": "CODE never returned in the child. It waits for something only a parent thread "
    "could do: a pool's worker, an event loop's thread, a runtime's workers, or a lock some "
    "thread held at the instant of fork. fork() copies memory, not threads.",
    "hangs_at_exit": "CODE worked, but the child could not exit: an exit hook (an atexit "
    "handler, threading's shutdown, a finaliser) waits for a thread that only the parent has.",
    "crashed": "The child died (a signal, or an abnormal exit): native state inherited from the "
    "parent (a lock taken mid-operation, an allocator arena, a pointer into a dead thread's "
    "memory) was used in the child.",
    "wrong": "CODE raised, or returned something else than in the parent: inherited state (a "
    "connection, a cached client, a PID, a random seed) misbehaves in the child.",
}

FIX = {
    "hung": "a fork-safe library (one that rebuilds its runtime and pools in each process, e.g. "
    "on forksafe); your own pools and clients made per process with "
    "forksafe.fork_local(factory); or workers started by forkserver or spawn, which inherit "
    "no threads.",
    "hangs_at_exit": "a library whose exit hook does nothing in a process that did not build "
    "the state (compare os.getpid() with the PID that registered it); workers that leave "
    "with os._exit, as multiprocessing's do; or forkserver/spawn workers.",
    "crashed": "a fork-safe library; forkserver or spawn workers; for C-level and raw forks, "
    "fork from a quiet process (no thread inside malloc or waiting for the GIL).",
    "wrong": "forksafe.fork_local(factory) for per-process state (clients, connections, "
    "seeds); or forkserver/spawn workers. If the value holds an address or a PID, compare "
    "with --no-compare.",
}


class BadInput(Exception):
    """CODE or its setup cannot be checked: exit status 2."""


# --------------------------------------------------------------------------------------------
# atexit bookkeeping
# --------------------------------------------------------------------------------------------


def describe(func: object) -> str:
    """``module.qualname`` of a callable (of the function a ``functools.partial`` wraps)."""
    inner = getattr(func, "func", None)
    if inner is not None and callable(inner):  # functools.partial
        func = inner
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


def _ncallbacks() -> int | None:
    count = getattr(atexit, "_ncallbacks", None)
    return int(count()) if callable(count) else None


class AtexitRegistry:
    """Records the atexit handlers registered after :meth:`install` (atexit cannot list them)."""

    def __init__(self) -> None:
        self.entries: list[Callable[..., Any]] = []
        self.installed = False

    def install(self) -> None:
        """Wraps ``atexit.register`` and ``atexit.unregister``; idempotent."""
        if self.installed:
            return
        self.installed = True
        original_register, original_unregister = atexit.register, atexit.unregister

        def register(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
            result = original_register(func, *args, **kwargs)
            self.entries.append(func)
            return result

        def unregister(func: Callable[..., Any]) -> None:
            original_unregister(func)
            self.entries = [f for f in self.entries if f != func]

        register.__doc__ = original_register.__doc__
        unregister.__doc__ = original_unregister.__doc__
        atexit.register = register
        atexit.unregister = unregister

    def names(self) -> list[str]:
        """The recorded handlers, in the order they run (last registered first)."""
        return [describe(f) for f in reversed(self.entries)]

    def unnamed(self) -> int | None:
        """Handlers registered outside the record (before it was installed)."""
        count = _ncallbacks()
        return None if count is None else max(0, count - len(self.entries))


REGISTRY = AtexitRegistry()


# --------------------------------------------------------------------------------------------
# CODE
# --------------------------------------------------------------------------------------------


def _source(filename: str, text: str) -> None:
    """Makes tracebacks show the lines of CODE and --setup."""
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)


def _compile(text: str, filename: str) -> tuple[types.CodeType, types.CodeType | None]:
    """CODE as statements and, if it ends with an expression, that expression (its value)."""
    tree = ast.parse(text, filename, "exec")
    last: types.CodeType | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expression = ast.Expression(tree.body.pop().value)
        last = compile(expression, filename, "eval")
    return compile(tree, filename, "exec"), last


def _user_traceback(exc: BaseException, filenames: Sequence[str]) -> str:
    """The traceback from the first frame of the user's code on (check's own frames dropped)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename not in filenames:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<repr() raised {type(exc).__name__}: {exc}>"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode(errors="replace")).hexdigest()


def _shorten(text: str) -> str:
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "...(cut)"


class CodeWork(Work):
    """The user's CODE, compared with the parent's value, with the exit check."""

    exit_check = True

    def __init__(self, code: str, filename: str, setup: str, compare: bool) -> None:
        self.code, self.filename, self.setup, self.compare = code, filename, setup, compare
        self.expected_digest = ""
        self.expected_repr = ""
        self._compiled: tuple[types.CodeType, types.CodeType | None] | None = None
        self._namespace: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:  # compiled code and the namespace stay here
        return {**self.__dict__, "_compiled": None, "_namespace": None}

    def compile(self) -> None:
        """Compiles setup and CODE; raises BadInput on a syntax error."""
        for text, filename in ((self.setup, "<setup>"), (self.code, self.filename)):
            _source(filename, text)
            try:
                compiled = _compile(text, filename)
            except SyntaxError as exc:
                where = "--setup" if filename == "<setup>" else "CODE"
                message = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
                raise BadInput(f"{where} is not valid Python:\n{message}") from None
            if filename == self.filename:
                self._compiled = compiled

    def start(self) -> None:
        """Records atexit handlers, makes the module, runs setup; BadInput if setup raises."""
        if self._compiled is None:
            self.compile()
        REGISTRY.install()
        module = types.ModuleType(MODULE)
        module.__dict__["__file__"] = self.filename
        sys.modules[MODULE] = module
        self._namespace = module.__dict__
        try:
            exec(compile(self.setup, "<setup>", "exec"), self._namespace)
        except BaseException as exc:
            raise BadInput(
                "--setup raised:\n" + _user_traceback(exc, ["<setup>", self.filename])
            ) from None

    def evaluate(self) -> object:
        """Runs CODE once in this process; returns the value of its last expression (or None)."""
        assert self._compiled is not None and self._namespace is not None
        statements, last = self._compiled
        exec(statements, self._namespace)
        return None if last is None else eval(last, self._namespace)

    def expect(self, value: object) -> str:
        """Keeps the parent's value for comparison; returns its repr."""
        text = _repr(value)
        self.expected_digest, self.expected_repr = _digest(text), _shorten(text)
        return text

    # -- in the children ----------------------------------------------------------------------

    def prepare_fresh(self) -> None:
        self.compile()
        self.start()

    def run(self, value: int) -> dict[str, Any]:
        try:
            result = self.evaluate()
        except BaseException as exc:  # SystemExit from CODE is a result too
            detail = "CODE raised:\n" + _user_traceback(exc, [self.filename, "<setup>"])
            return {"ok": False, "raised": True, "detail": detail}
        text = _repr(result)
        ok = not self.compare or _digest(text) == self.expected_digest
        payload: dict[str, Any] = {"ok": ok, "repr": _shorten(text)}
        if not ok:
            payload["detail"] = f"returned {_shorten(text)}; the parent got {self.expected_repr}"
        return payload

    def exit_info(self, multiprocessing_exit: bool) -> dict[str, Any]:
        me = threading.current_thread()
        callbacks = getattr(threading, "_threading_atexits", [])  # threading._register_atexit
        info: dict[str, Any] = {
            "threading_atexit": [describe(f) for f in reversed(callbacks)],
            "threads_joined": [
                t.name for t in threading.enumerate() if t is not me and not t.daemon
            ],
        }
        if multiprocessing_exit:
            info["note"] = (
                "multiprocessing children do not run atexit handlers: they leave through "
                "util._exit_function() and threading._shutdown(), then os._exit"
            )
        else:
            info["atexit"] = REGISTRY.names()
            info["atexit_unnamed"] = REGISTRY.unnamed()
        return info


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

    # Joined before any fork: a thread waiting for the GIL at the instant of a C-level fork
    # would deadlock the child.
    watchdog = threading.Thread(target=watch, name="forksafe-check-watchdog", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _threads(names: list[str]) -> str:
    counted: dict[str, int] = {}
    for name in names:
        counted[name] = counted.get(name, 0) + 1
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counted.items())


def _exit_lines(info: dict[str, Any]) -> list[str]:
    lines = []
    if "atexit" in info:
        named = ", ".join(info["atexit"]) or "none recorded"
        line = f"atexit handlers still registered (in run order): {named}"
        if info.get("atexit_unnamed"):
            line += f"; and {info['atexit_unnamed']} registered before check started"
        lines.append(line)
    if info.get("threading_atexit"):
        lines.append("threading exit callbacks: " + ", ".join(info["threading_atexit"]))
    if info.get("threads_joined"):
        lines.append("non-daemon threads the exit joins: " + ", ".join(info["threads_joined"]))
    if info.get("finalisation"):
        lines.append(f"finalisation: {info['finalisation']}")
    if info.get("note"):
        lines.append(str(info["note"]))
    return lines


_ADDRESS = re.compile(r"0x[0-9a-f]+")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]*)", line \d+ in ')
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_OWN = {os.path.join(_PACKAGE, name) for name in ("_check.py", "_forks.py", "__main__.py")}


def trim_stack(stack: str) -> str:
    """A faulthandler dump without check's own frames (the callers of CODE and of the exit)."""
    lines, skipping = [], False
    for line in stack.splitlines():
        frame = _FRAME.match(line)
        if frame is None:
            skipping = False  # a thread header or a blank line
            lines.append(line)
        elif not skipping and os.path.abspath(frame["file"]) in _OWN:
            skipping = True
            lines.append(line[: frame.start("file") - 6] + "(forksafe check's own frames)")
        elif not skipping:
            lines.append(line)
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str = "    ") -> list[str]:
    return textwrap.wrap(text, 100, initial_indent=first, subsequent_indent=rest)


def diagnose(rows: list[dict[str, Any]], outcomes: dict[str, list[Outcome]]) -> str:
    """What each failing path means and what usually fixes it, with its first failure."""
    lines: list[str] = []
    explained: set[str] = set()
    stacks: dict[str, str] = {}
    for row in rows:
        method = row["method"]
        kinds = [k for k in KINDS if k != "ok" and row[k]]
        if not kinds:
            continue
        counts = ", ".join(f"{k.replace('_', ' ')} {row[k]}" for k in kinds)
        lines += ["", f"{method}: {counts} of {row['forks']} processes"]
        lines += _wrap(PATH_HINT[method], "  ")
        for kind in kinds:
            name = kind.replace("_", " ")
            if kind in explained:
                lines.append(f"  {name}: see above")
                continue
            explained.add(kind)
            lines += _wrap(f"{name} means: {MEANING[kind]}", "  ")
            lines += _wrap(f"usually fixed by: {FIX[kind]}", "  ")
        failed = next(o for o in outcomes[method] if o.status != "ok")
        culprit = failed.culprit
        if culprit is None:
            lines.append(f"  first failure: {failed.detail}")
            continue
        lines.append(f"  first failure, pid {culprit.pid}: {culprit.detail.rstrip()}"[:4000])
        if culprit.threads:
            lines.append(f"    native threads: {_threads(culprit.threads)}")
        if culprit.exit_info:
            lines += [f"    {line}" for line in _exit_lines(culprit.exit_info)]
        if not culprit.stack:
            continue
        hang = culprit.status in ("hung", "hangs_at_exit")
        stack = trim_stack(culprit.stack)
        key = _ADDRESS.sub("0x", stack)
        if key in stacks:
            lines.append(f"    Python stacks: the same as {stacks[key]}'s")
            continue
        stacks[key] = method
        lines.append("    Python stacks at the deadline:" if hang else "    last output:")
        lines.append(_indent(stack, "      "))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--count", type=int, default=3, help="children (nested: chains) per fork path (default 3)"
    )
    parser.add_argument(
        "--depth", type=int, default=2, help="generations per chain for 'nested' (default 2)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(PATHS),
        help=f"comma-separated subset of {','.join(PATHS)} (default: all)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=10.0,
        help="seconds each child gets for its result, and again to exit (default 10)",
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="do not compare the children's values by repr"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str], CodeWork]:
    parser = _parser()
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in PATHS]
    if unknown or not methods:
        parser.error(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    if (args.code is None) == (args.file is None):
        parser.error("give CODE or --file (one of them)")
    for name in ("count", "depth"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.deadline > 0:
        parser.error("--deadline must be a positive number of seconds")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as script:
                code, filename = script.read(), args.file
        except OSError as exc:
            parser.error(f"cannot read --file {args.file}: {exc.strerror or exc}")
    else:
        code, filename = args.code, "<CODE>"
    return args, methods, CodeWork(code, filename, args.setup, compare=not args.no_compare)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every path is ok, 1 otherwise, 2 for bad input."""
    args, methods, work = _arguments(argv)
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
                    "with:\n" + _user_traceback(exc, [work.filename, "<setup>"])
                ) from None
            parent_ms = (time.monotonic() - started) * 1000
    except BadInput as exc:
        print(f"error: {exc}".rstrip(), file=sys.stderr)
        return 2
    shown = _shorten(work.expect(value))
    if not args.json:
        print(f"parent: CODE returned {shown} in {parent_ms:.1f} ms", flush=True)

    jobs = [m for m in methods if m in FORK_PATHS for _ in range(args.count)]
    jobs += [m for m in methods if m in FRESH_PATHS]
    progress = Progress(len(jobs), sys.stderr.isatty() and not args.json)
    outcomes: dict[str, list[Outcome]] = {m: [] for m in methods}
    began = time.monotonic()
    for outcome in run_forks(
        work,
        jobs,
        concurrency=len(jobs),
        depth=args.depth,
        deadline=args.deadline,
        on_tick=progress.tick,
    ):
        outcomes[outcome.method].append(outcome)
        progress.add(outcome)
    progress.clear()
    elapsed = time.monotonic() - began
    rows = [summarise(m, outcomes[m]) for m in methods]
    passed = all(row["ok"] == row["forks"] for row in rows)
    if args.json:
        print(json.dumps({
            "parent": {"repr": shown, "ms": round(parent_ms, 2)},
            "rows": rows,
            "outcomes": [o.as_dict() for m in methods for o in outcomes[m]],
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
            failing = [row["method"] for row in rows if row["ok"] != row["forks"]]
            print(f"\nFAILED on {', '.join(failing)} ({processes} processes in {elapsed:.1f} s)")
    return 0 if passed else 1
