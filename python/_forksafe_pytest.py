"""``pytest --forksafe``: the pytest plugin, registered through the ``pytest11`` entry point.

pytest imports this module in every run of every environment that has forksafe installed, so it
lives outside the ``forksafe`` package: importing ``forksafe._cli.anything`` would first run
``forksafe/__init__.py`` (the native module, asyncio), about 60 ms in every pytest run. It
imports only pytest, adds the options and the ``forksafe`` marker, and only when ``--forksafe``
is given or a collected test carries the marker does it import the part that forks
(``forksafe._cli.pytest_forks``, on the fork engine). ``import forksafe`` never imports it.
The same layout as Hypothesis's ``_hypothesis_pytestplugin``, for the same reason.
"""

from __future__ import annotations

from typing import Any

import pytest

MARKER = (
    "forksafe: after the test passes, fork children by every fork path and run the test "
    "function again in each, with the same fixture values (pytest --forksafe does it for all)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("forksafe", "fork safety (python -m forksafe check, per test)")
    group.addoption(
        "--forksafe",
        action="store_true",
        default=False,
        help="run every test once, then again in children forked by every fork path",
    )
    group.addoption(
        "--forksafe-paths",
        default=None,
        metavar="PATHS",
        help="comma-separated fork paths (default: every one the engine forks: os_fork, "
        "mp_fork, c_fork, raw_syscall, thread_fork, nested)",
    )
    group.addoption(
        "--forksafe-count",
        type=int,
        default=1,
        metavar="N",
        help="children (nested: chains) per path and test (default 1)",
    )
    group.addoption(
        "--forksafe-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds each child gets for its result, and again to exit (default 10)",
    )
    group.addoption(
        "--forksafe-depth",
        type=int,
        default=2,
        metavar="N",
        help="generations per chain of the 'nested' path (default 2)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    if config.getoption("forksafe"):
        _forks(config)  # bad options are a usage error before anything runs


# First, so that -k and -m select sub-items too (a sub-item runs its test itself if needed).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not config.getoption("forksafe") and not any(
        item.get_closest_marker("forksafe") for item in items
    ):
        return
    _forks(config).expand(session, items)


def _forks(config: pytest.Config) -> Any:
    """The active part, registered once per run (it validates the options)."""
    active = config.pluginmanager.get_plugin("forksafe-forks")
    if active is None:
        from forksafe._cli.pytest_forks import Forks

        active = Forks(config)
        config.pluginmanager.register(active, "forksafe-forks")
    return active
