"""The active part of ``pytest --forksafe`` (the entry module, ``_forksafe_pytest``, imports it only
when asked).

Each forksafe test gets one sub-item per fork path, right after it: ``test_read[forksafe:c_fork]``
(``test_read[1-forksafe:c_fork]`` for a parametrized one). The test itself runs as usual; when it
passes, while its fixtures are still set up, the fork engine starts the children of every path
at once (as ``check`` does). Each child calls the same test function with the same fixture
values, reports on the engine's pipe and leaves as the engine's children do: it never returns
into pytest, so no teardown and no second run of the session (pytest #12028). The sub-items then
report their path's verdict with ``check``'s diagnosis. A test that fails in the parent fails
once; its sub-items are skipped, and no child runs.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator

    from .engine import Outcome

SUBJECT = "the test function"
"""What the plugin's reports call the code each child ran (check says ``CODE``)."""

NO_FORK = "this platform has no fork() (Windows): the test ran once, unforked; no child ran"


class _Group:
    """A forksafe test and the outcomes of its children, shared by its sub-items."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.outcomes: dict[str, list[Outcome]] | None = None
        self.parent_failed = False
        self.parent_threads: list[str] = []


_GROUP = pytest.StashKey[_Group]()


def _user_traceback(exc: BaseException, code: object) -> str:
    """The traceback from the test function's frame on (the plugin's and engine's dropped)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not code:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _make_work(function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    from .code import exit_waits
    from .engine import Work

    code = getattr(inspect.unwrap(function), "__code__", None)

    class FunctionWork(Work):
        """The test function, called with the parent's fixture values, with the exit check."""

        exit_check = True
        subject = SUBJECT

        def run(self, value: int) -> dict[str, Any]:
            # pytest's capture objects write to its files; the engine put the pipe on fd 1 and 2.
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            try:
                function(**kwargs)
            except BaseException as exc:  # pytest.fail/skip and SystemExit are results too
                detail = "the test raised:\n" + _user_traceback(exc, code)
                return {"ok": False, "raised": True, "detail": detail}
            return {"ok": True}

        def exit_info(self, multiprocessing_exit: bool) -> dict[str, Any]:
            return exit_waits(multiprocessing_exit)  # check's, without its atexit registry

    return FunctionWork()


class ForkPathItem(pytest.Function):
    """One fork path of a forksafe test: its verdict, from the children forked after the test
    passed. Fixtures are set up only if the test has not run in this process (under xdist it
    may have run in another worker): then this item runs it here first."""

    fork_path: str | None = None
    group: _Group
    forks: Forks

    def setup(self) -> None:
        if self.forks.unavailable or self.group.outcomes is not None or self.group.parent_failed:
            return
        super().setup()

    def runtest(self) -> None:
        if self.forks.unavailable:
            pytest.skip(f"forksafe: {self.forks.unavailable}")
        if self.group.parent_failed:
            pytest.skip("forksafe: the test did not pass in the parent, so no child ran")
        if self.group.outcomes is None:
            try:
                super().runtest()  # the test's own run: an ordinary failure if it fails
            except BaseException:
                self.group.parent_failed = True
                raise
            self.forks.fork(self, self.group)
        assert self.group.outcomes is not None and self.fork_path is not None
        self._verdict(self.fork_path, self.group.outcomes[self.fork_path])

    def _verdict(self, path: str, outcomes: list[Outcome]) -> None:
        if all(outcome.status == "ok" for outcome in outcomes):
            return
        from .diagnosis import diagnose
        from .report import summarise

        row = summarise(path, outcomes)
        text = diagnose([row], {path: outcomes}, self.group.parent_threads, subject=SUBJECT)
        pytest.fail(
            f"the test passed in the parent, then failed in children forked by {path}:\n"
            + text.lstrip("\n"),
            pytrace=False,
        )


def _sub_name(name: str, path: str | None) -> str:
    tag = "forksafe" if path is None else f"forksafe:{path}"
    return f"{name[:-1]}-{tag}]" if name.endswith("]") else f"{name}[{tag}]"


def _set_nodeid(node: pytest.Item, nodeid: str) -> None:
    """Gives a sub-item its own node ID: pytest builds a Function's from its original name and
    parameters, which a sub-item shares with its test (pytest 9.2+ keeps a structured ``_id``,
    older versions a ``_nodeid`` string)."""
    anyway: Any = node
    if hasattr(anyway, "_id"):
        anyway._id = type(anyway._id).parse(nodeid)
    else:
        anyway._nodeid = nodeid


def _unsupported(item: pytest.Item) -> str | None:
    """Why the plugin cannot run this item in children, or None."""
    from _pytest.unittest import TestCaseFunction

    if not isinstance(item, pytest.Function) or isinstance(item, TestCaseFunction):
        return f"{type(item).__name__} items (only plain test functions and methods)"
    if inspect.iscoroutinefunction(inspect.unwrap(item.obj)):
        return "async test functions (a child would need the test's event loop)"
    return None


class Forks:
    """The active plugin: the validated options, the sub-items, the forks."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.all = bool(config.getoption("forksafe"))
        self.skipped: list[str] = []
        self.unavailable = "" if hasattr(os, "fork") else NO_FORK
        self.count = int(config.getoption("forksafe_count"))
        self.depth = int(config.getoption("forksafe_depth"))
        self.deadline = float(config.getoption("forksafe_deadline"))
        for name in ("count", "depth"):
            if getattr(self, name) < 1:
                raise pytest.UsageError(f"--forksafe-{name} must be at least 1")
        if not self.deadline > 0:
            raise pytest.UsageError("--forksafe-deadline must be a positive number of seconds")
        self.paths: list[str] = []
        if not self.unavailable:
            self.paths = self._paths(config.getoption("forksafe_paths"))
            self._check_timeout()

    @staticmethod
    def _paths(option: str | None) -> list[str]:
        from .engine import FORK_PATHS, PATHS

        if option is None:
            return list(FORK_PATHS)
        paths = [name.strip() for name in option.split(",") if name.strip()]
        unknown = [name for name in paths if name not in PATHS]
        if unknown or not paths:
            raise pytest.UsageError(
                f"--forksafe-paths: unknown fork path(s) {unknown}; "
                f"choose from {', '.join(FORK_PATHS)}"
            )
        fresh = [name for name in paths if PATHS[name].fresh]
        if fresh:
            raise pytest.UsageError(
                f"--forksafe-paths: {', '.join(fresh)} start a fresh interpreter, which inherits "
                "no fixture: the plugin cannot fork into them (python -m forksafe check compares "
                f"with them); choose from {', '.join(FORK_PATHS)}"
            )
        return list(dict.fromkeys(paths))

    def _check_timeout(self) -> None:
        """pytest-timeout's limit covers the test and its children: say so if it is the lower."""
        limit: Any = getattr(self.config.option, "timeout", None)
        if limit is None:
            try:
                limit = self.config.getini("timeout")
            except ValueError:  # pytest-timeout is not installed
                return
        try:
            seconds = float(limit or 0)
        except (TypeError, ValueError):
            return
        worst = 2 * self.deadline + 3  # result + exit deadline, stack dumps, start-up
        if 0 < seconds < worst:
            warnings.warn(
                pytest.PytestConfigWarning(
                    f"forksafe: pytest-timeout's limit ({seconds:g} s) is below a forksafe "
                    f"test's worst case (about {worst:g} s with --forksafe-deadline "
                    f"{self.deadline:g}): a hung child is reported as pytest-timeout's timeout "
                    "of the whole test, without forksafe's diagnosis"
                ),
                stacklevel=2,
            )

    # -- collection ---------------------------------------------------------------------------

    def expand(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        """Adds each forksafe test's sub-items right after it."""
        expanded: list[pytest.Item] = []
        for item in items:
            expanded.append(item)
            marked = item.get_closest_marker("forksafe") is not None
            if not (self.all or marked) or isinstance(item, ForkPathItem):
                continue
            reason = _unsupported(item)
            if reason is not None:
                if marked:
                    raise pytest.UsageError(
                        f"{item.nodeid}: the forksafe marker does not support {reason}"
                    )
                self.skipped.append(f"{item.nodeid}: {reason}")
                continue
            assert isinstance(item, pytest.Function)
            group = item.stash[_GROUP] = _Group(self.paths)
            base = item.nodeid[: -len(item.name)]
            paths: list[str | None] = [*self.paths] or [None]  # None: no fork() here
            for path in paths:
                sub = ForkPathItem.from_parent(
                    item.parent,
                    name=_sub_name(item.name, path),
                    callspec=getattr(item, "callspec", None),
                    callobj=item.obj,
                    fixtureinfo=item._fixtureinfo,
                    originalname=item.originalname,
                )
                sub.fork_path, sub.group, sub.forks = path, group, self
                _set_nodeid(sub, base + sub.name)
                expanded.append(sub)
        items[:] = expanded

    # -- the run ------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        group = item.stash.get(_GROUP, None)
        if group is None or self.unavailable:
            return (yield)
        try:
            result = yield
        except BaseException:
            group.parent_failed = True
            raise
        if group.outcomes is None:
            assert isinstance(item, pytest.Function)
            self.fork(item, group)
        return result

    def fork(self, item: pytest.Function, group: _Group) -> None:
        """Forks the children of every path now, while the test's fixtures are set up."""
        from .engine import run_forks, thread_names

        argnames = item._fixtureinfo.argnames
        work = _make_work(item.obj, {name: item.funcargs[name] for name in argnames})
        jobs = [path for path in group.paths for _ in range(self.count)]
        outcomes: dict[str, list[Outcome]] = {path: [] for path in group.paths}
        group.parent_threads = thread_names(os.getpid())
        with warnings.catch_warnings():
            # Python 3.12+ warns when a multi-threaded process forks: that is what is tested.
            warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
            for outcome in run_forks(
                work, jobs, concurrency=len(jobs), depth=self.depth, deadline=self.deadline
            ):
                outcomes[outcome.path].append(outcome)
        group.outcomes = outcomes

    def pytest_report_header(self) -> str:
        if self.unavailable:
            return f"forksafe: off, {self.unavailable}"
        return (
            f"forksafe: paths {','.join(self.paths)}, {self.count} child(ren) each, "
            f"deadline {self.deadline:g} s"
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.skipped:
            terminalreporter.write_sep("-", "forksafe: not run in children")
            for line in self.skipped:
                terminalreporter.write_line(line)
