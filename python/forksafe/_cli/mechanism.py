"""The fork handling a library has, named from which fork paths fail (one line under check's
table). The paths differ in the hooks they run (``ForkPath.python_hooks``, ``c_hooks``):

- fails only where ``os.register_at_fork`` handlers do not run (a C-level fork, a raw clone):
  the library repairs itself in such a handler;
- fails only where ``pthread_atfork`` handlers do not run either (a raw clone): a
  ``pthread_atfork`` hook;
- fails on every fork path: no fork handling;
- raises a clear error that names the fork: fail-fast;
- fails in every child of the paths that skip a hook, and in only some children of the paths
  that run it: the hook repairs, but races the child's first call (gRPC's fork support, whose
  post-fork threads reset the channel while the child may already be calling on it).

With a single fork path checked, no pattern can be told apart: it says so.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .engine import PATHS, Outcome, thread_names
from .report import rate

FIX = (
    "Fix: check the process on every access instead of in a fork hook (a registry keyed by "
    "process, as forksafe does: forksafe.fork_local in Python, forksafe::ForkLocal in Rust), "
    "or start workers with spawn or forkserver."
)


def _failing(row: dict[str, Any]) -> bool:
    return bool(row["ok"] != row["forks"])


def _names(rows: list[dict[str, Any]]) -> str:
    return ", ".join(row["path"] for row in rows)


_WORKER = re.compile(r"^forksafe-\d+$")


def uses_forksafe() -> bool:
    """Whether the checked code built a forksafe runtime here: its worker threads run (their
    default names, ``forksafe-N``; the tool importing the package builds none)."""
    return any(_WORKER.match(name) for name in thread_names(os.getpid()))


def _fail_fast(failing: list[dict[str, Any]], outcomes: dict[str, list[Outcome]]) -> str:
    """The error message if every failing fork path's failures raised one that names fork."""
    first = ""
    for row in failing:
        for outcome in outcomes[row["path"]]:
            culprit = outcome.culprit
            if culprit is None:
                continue
            raised = culprit.payload is not None and culprit.payload.get("raised")
            last = culprit.detail.strip().splitlines()[-1:] or [""]
            if culprit.status != "wrong" or not raised or "fork" not in last[0].lower():
                return ""
            first = first or last[0]
    return first


def _exit_hangs(outcomes: list[Outcome]) -> bool:
    return all(o.status in ("ok", "hangs_at_exit") for o in outcomes)


def _racy_hook(
    failing: list[dict[str, Any]],
    no_python_hooks: list[dict[str, Any]],
    no_c_hooks: list[dict[str, Any]],
) -> str:
    """The finding when the paths that skip a kind of fork hook fail in every child and the
    paths that run it fail in only some: a hook that repairs, but not before every child's
    first call. "" otherwise."""
    always = [row for row in failing if row["failed"] == row["children"]]
    sometimes = [row for row in failing if row not in always]
    if not sometimes or not always:
        return ""
    if always == no_c_hooks:
        hook, skipped = "a pthread_atfork hook", "every fork handler, C and Python"
    elif always == no_python_hooks and no_python_hooks != no_c_hooks:
        hook, skipped = "an os.register_at_fork hook", "Python's fork handlers"
    else:
        return ""
    verb = "fails" if len(always) == 1 else "fail"
    rates = ", ".join(f"{row['path']} {rate(row)}" for row in sometimes)
    return (
        f"Repairs itself in {hook}, but not in time for every child: {_names(always)} "
        f"{verb} in every child (skipping {skipped}), while the forks that run it fail in "
        f"some children only ({rates}): the repair races the child's first call (it "
        f"finishes on a thread the hook starts, or later). {FIX}"
    )


def name(
    rows: list[dict[str, Any]], outcomes: dict[str, list[Outcome]], forksafe: bool | None = None
) -> list[str]:
    """One sentence per finding about the code's fork handling and what fixes it."""
    if forksafe is None:
        forksafe = uses_forksafe()
    forks = [row for row in rows if not PATHS[row["path"]].fresh]
    fresh = [row for row in rows if PATHS[row["path"]].fresh]
    failing = [row for row in forks if _failing(row)]
    lines = []
    if any(_failing(row) for row in fresh):
        lines.append(
            f"CODE fails in a fresh interpreter too ({_names([r for r in fresh if _failing(r)])}): "
            "that part is not a fork problem (or --setup lacks what CODE needs)."
        )
    if forksafe:
        lines.append(
            "CODE runs on forksafe, which rebuilds its runtime in each process (it checks the "
            "process on every access, with no fork hook)"
            + (": what fails is something else built in the parent." if failing else ".")
        )
    if not failing:
        return lines
    ok = [row for row in forks if not _failing(row)]
    if all(_exit_hangs(outcomes[row["path"]]) for row in failing):
        # multiprocessing's children leave through os._exit: their exit proves nothing here.
        ok = [row for row in ok if PATHS[row["path"]].context is None]
        forks = [row for row in forks if row in failing or row in ok]
    no_python_hooks = [row for row in forks if not PATHS[row["path"]].python_hooks]
    no_c_hooks = [row for row in forks if not PATHS[row["path"]].c_hooks]
    error = _fail_fast(failing, outcomes)
    if error:
        lines.append(
            f"Fail-fast: the children raise a clear error that names the fork ({error[:200]}). "
            "That is honest, but the children cannot use it: build it per process "
            "(forksafe.fork_local(factory)), or start workers with spawn or forkserver."
        )
    elif len(forks) == 1:
        lines.append(
            f"Fails on {_names(failing)}, the only fork path checked: run the other fork paths "
            "too (check's default) to tell which fork handling CODE has."
        )
    elif racy := _racy_hook(failing, no_python_hooks, no_c_hooks):
        lines.append(racy)
    elif not ok:
        lines.append(f"No fork handling: CODE fails on every fork path. {FIX}")
    elif failing == no_python_hooks and no_python_hooks != no_c_hooks:
        lines.append(
            f"Repairs itself in an os.register_at_fork hook: only {_names(failing)} fail, the "
            f"forks that skip Python's fork handlers. {FIX}"
        )
    elif failing == no_c_hooks:
        lines.append(
            f"Repairs itself in a pthread_atfork hook: only {_names(failing)} fails, the fork "
            f"that skips every fork handler, C and Python. {FIX}"
        )
    else:
        lines.append(
            f"No known pattern: fails on {_names(failing)}, ok on {_names(ok)} (compare the "
            "diagnoses above)."
        )
    return lines
