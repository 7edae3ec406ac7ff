"""What ``check`` prints under its table: for each failing path, what its failures mean, what
usually fixes them, and the first failure's evidence (native threads, the exit, the Python
stacks without check's own frames)."""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import textwrap
import threading
from typing import Any

from . import printed
from .engine import KINDS, PATHS, Outcome, thread_names

SUBJECT = "CODE"
"""What ``check``'s texts call the code they run in each child (``{subject}`` in MEANING, FIX
and REBUILT_RUNTIME; ``{Subject}`` at a sentence's start); the pytest plugin says "the test
function"."""

MEANING = {
    "hung": "{Subject} never returned in the child. It waits for something only a parent thread "
    "could do: a pool's worker, an event loop's thread, a runtime's workers, or a lock some "
    "thread held at the instant of fork. fork() copies memory, not threads.",
    "hangs_at_exit": "{Subject} returned (or raised, when the detail says so), but the child could "
    "not exit: an exit hook (an atexit "
    "handler, threading's shutdown, a finaliser) waits for a thread that only the parent has.",
    "crashed": "The child died (a signal, or an abnormal exit): native state inherited from the "
    "parent (a lock taken mid-operation, an allocator arena, a pointer into a dead thread's "
    "memory) was used in the child.",
    "wrong": "{Subject} raised, or returned something else than in the parent: inherited state (a "
    "connection, a cached client, a PID, a random seed) misbehaves in the child.",
}

FIX = {
    "hung": "a fork-safe library (one that rebuilds its runtime and pools in each process, e.g. "
    "on forksafe); your own pools and clients made per process with "
    "forksafe.fork_local(factory) (in a Rust extension: forksafe::ForkLocal::with_init); or "
    "workers started by forkserver or spawn, which inherit no threads.",
    "hangs_at_exit": "a library whose exit hook does nothing in a process that did not build "
    "the state (compare os.getpid() with the PID that registered it); workers that leave "
    "with os._exit, as multiprocessing's do; or forkserver/spawn workers.",
    "crashed": "a fork-safe library; forkserver or spawn workers; for C-level and raw forks, "
    "fork from a quiet process: no other thread inside malloc, waiting for the GIL or (on a "
    "free-threaded build) attached to the interpreter.",
    "wrong": "forksafe.fork_local(factory) for per-process state (clients, connections, "
    "seeds); or forkserver/spawn workers. If the value holds an address or a PID, compare "
    "with --no-compare.",
}

REBUILT_RUNTIME = (
    "The child runs a fresh runtime (its {threads} threads were started again in the child: "
    "fork() copies no thread), yet {subject} hung. What still waits is an object built in the "
    "parent and used in the child: a pooled keep-alive connection, a client, a task or a "
    "handle on the parent's runtime. Rust extension authors: build it per process with "
    "forksafe::ForkLocal::with_init (for object_store: "
    "forksafe::object_store::v0_14::ForkLocalConnector). Python users: "
    "forksafe.fork_local(factory)."
)

FREE_THREADED_FORK = (
    "Likely cause: this free-threaded build (the GIL is disabled) and a fork that skips "
    "CPython's fork handling. os.fork stops every other thread before it forks; a C-level or "
    "raw fork does not, so a thread that was attached to the interpreter at that instant "
    "(running Python){parent} stays attached in the child, where it does not exist. The "
    "child's next stop-the-world pause (gc.collect(), for one) then waits for it forever, or "
    "the child crashes (SIGSEGV) on its stale state. This is CPython's free-threaded hazard, "
    "not your library's. os.fork and multiprocessing avoid it (they stop the world before "
    "they fork); a C-level or raw fork is safe only from a process with no other thread "
    "attached.{clean}"
)


def free_threaded() -> bool:
    """Whether this interpreter runs Python without the GIL: a free-threaded build (3.13t+)
    with the GIL not enabled again (``PYTHON_GIL=1``, or an extension that needs it)."""
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if callable(gil_enabled):
        return not gil_enabled()
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


_WORKER = re.compile(r"^(?P<prefix>.+)-\d+$")


def rebuilt_runtimes(child: list[str], parent: list[str]) -> list[str]:
    """The numbered thread families (a runtime's workers: ``forksafe-0``, ``forksafe-1``...)
    that a child runs and the parent runs too. fork() copies only the forking thread, so a
    child's worker threads were started in the child: a runtime rebuilt there."""
    ours = {m["prefix"] for m in map(_WORKER.match, parent[1:]) if m}
    theirs = {m["prefix"] for m in map(_WORKER.match, child[1:]) if m}
    return sorted(ours & theirs)


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
_TOOL = os.path.dirname(os.path.abspath(__file__)) + os.sep
"""The folder of the ``forksafe._cli`` package (the tool and its engine)."""


def _own(file: str) -> bool:
    return os.path.abspath(file).startswith(_TOOL)


def trim_stack(stack: str) -> str:
    """A faulthandler dump without check's own frames: a thread's frames from the first one in
    the ``forksafe._cli`` package on (the callers of CODE and of the exit)."""
    lines, skipping = [], False
    for line in stack.splitlines():
        frame = _FRAME.match(line)
        if frame is None:
            skipping = False  # a thread header or a blank line
            lines.append(line)
        elif not skipping and _own(frame["file"]):
            skipping = True
            lines.append(line[: frame.start("file") - 6] + "(forksafe check's own frames)")
        elif not skipping:
            lines.append(line)
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str = "    ") -> list[str]:
    # Never inside an option or a path ("--no-compare", "forksafe::ForkLocal::with_init").
    return textwrap.wrap(text, 100, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False, break_long_words=False)  # fmt: skip


def _free_threaded_note(rows: list[dict[str, Any]]) -> str:
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    parent = f"; the parent runs {len(others)} other Python threads: {_threads(others)}"
    # Paths that stop the world first (they run CPython's fork handling), all ok here.
    clean = [
        row["path"]
        for row in rows
        if not PATHS[row["path"]].stale
        and not PATHS[row["path"]].fresh
        and row["ok"] == row["forks"]
    ]
    return FREE_THREADED_FORK.format(
        parent=parent if others else "",
        clean=f" Here every child of {', '.join(clean)} was ok." if clean else "",
    )


def _native_lines(evidence: dict[str, Any]) -> list[str]:
    lines = ["native threads (/proc/PID/task):"]
    lines += [f"  {line}" for line in evidence.get("threads", [])]
    if evidence.get("stuck"):
        lines.append(f"stuck in: {evidence['stuck']}")
    for hazard in evidence.get("hazards", []):
        lines += _wrap(f"known native hazard: {hazard['name']}. {hazard['fix']}", "", "  ")
    if evidence.get("backtrace"):
        lines.append(f"native backtrace ({evidence['tool']}):")
        lines += [f"  {line}" for line in str(evidence["backtrace"]).splitlines()[:60]]
    else:
        lines.append(f"no native backtrace: {evidence.get('tool')}")
    return lines


def _hazards(outcome: Outcome) -> list[Any]:
    """The known native hazards the outcome's native evidence names."""
    culprit = outcome.culprit
    return list((culprit.native or {}).get("hazards", [])) if culprit else []


def diagnose(
    rows: list[dict[str, Any]],
    outcomes: dict[str, list[Outcome]],
    parent_threads: list[str] | None = None,
    subject: str = SUBJECT,
) -> str:
    """What each failing path means and what usually fixes it, with its first failure.
    ``parent_threads``: this process's native thread names (read from /proc if not given).
    ``subject``: what the texts call the code each child ran (check's ``CODE``)."""
    if parent_threads is None:
        parent_threads = thread_names(os.getpid())
    names = {"subject": subject, "Subject": subject[:1].upper() + subject[1:]}
    lines: list[str] = []
    explained: set[str] = set()
    stacks: dict[str, str] = {}
    for row in rows:
        path = PATHS[row["path"]]
        kinds = [k for k in KINDS if k != "ok" and row[k]]
        if not kinds:
            continue
        counts = ", ".join(f"{k.replace('_', ' ')} {row[k]}" for k in kinds)
        lines += ["", f"{path.name}: {counts} of {row['forks']} processes"]
        lines += _wrap(path.hint, "  ")
        if path.stale and free_threaded() and {"hung", "crashed", "hangs_at_exit"} & {*kinds}:
            if "free-threaded" in explained:
                lines.append("  free-threaded build: the likely cause is the one above")
            else:
                explained.add("free-threaded")
                lines += _wrap(_free_threaded_note(rows), "  ")
        for kind in kinds:
            name = kind.replace("_", " ")
            if kind in explained:
                lines.append(f"  {name}: see above")
                continue
            explained.add(kind)
            lines += _wrap(f"{name} means: {MEANING[kind].format(**names)}", "  ")
            lines += _wrap(f"usually fixed by: {FIX[kind].format(**names)}", "  ")
        failures = [o for o in outcomes[path.name] if o.status != "ok"]
        # The first failure whose native frames name a known hazard, else the first failure.
        failed = next((o for o in failures if _hazards(o)), failures[0])
        culprit = failed.culprit
        if culprit is None:
            lines.append(f"  first failure: {failed.detail}")
            continue
        rebuilt = rebuilt_runtimes(culprit.threads, parent_threads)
        if culprit.status == "hung" and rebuilt and not _hazards(failed):
            if "rebuilt" in explained:
                lines.append("  a fresh runtime, still hung: see above")
            else:
                explained.add("rebuilt")
                families = ", ".join(f"{prefix}-N" for prefix in rebuilt)
                lines += _wrap(REBUILT_RUNTIME.format(threads=families, **names), "  ")
        first, *more = (culprit.detail.rstrip()[:4000] or "?").splitlines()
        lines.append(f"  first failure, pid {culprit.pid}: {first}")
        lines += [_indent(line, "      ") for line in more]  # a traceback, in its block
        for panic in printed.panics(failed.output):
            lines.append(f"    Rust panic: {panic}")
        if culprit.threads:
            lines.append(f"    native threads: {_threads(culprit.threads)}")
        if culprit.exit_info and culprit.status == "hangs_at_exit":
            lines += [f"    {line}" for line in _exit_lines(culprit.exit_info)]
        evidence = culprit.native
        if evidence:
            lines += [f"    {line}" for line in _native_lines(evidence)]
        if not culprit.stack:
            continue
        hang = culprit.status in ("hung", "hangs_at_exit")
        stack = trim_stack(culprit.stack)
        key = _ADDRESS.sub("0x", stack)
        if key in stacks:
            lines.append(f"    Python stacks: the same as {stacks[key]}'s")
            continue
        stacks[key] = path.name
        lines.append("    Python stacks at the deadline:" if hang else "    last output:")
        lines.append(_indent(stack, "      "))
    return "\n".join(lines)
