"""Fixtures: moto's S3 server, the 1,000-object data set, and a Store warmed in this process;
the fork warnings' filter.

The hang detector is forksafe's own fork engine (``forksafe._cli.engine.calls``, installed with
forksafe); served.py runs gunicorn. Nothing here comes from the
other suites under tests/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import forksafe_objstore
import objdata
import pytest
from forksafe_objstore import Store


def pytest_report_header() -> list[str]:
    build = "forksafe"
    if forksafe_objstore.CONTROL:
        build = "CONTROL: plain pyo3-async-runtimes, one shared client"
    return [
        f"forksafe_objstore: {forksafe_objstore.__file__} ({build})",
        f"FORKSAFE_PID_CHECK={os.environ.get('FORKSAFE_PID_CHECK', '(unset)')}",
    ]


@pytest.fixture(scope="session")
def moto() -> Iterator[objdata.MotoServer]:
    server = objdata.MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def data(moto: objdata.MotoServer) -> objdata.DataSet:
    return objdata.populate(moto)


@pytest.fixture(scope="session")
def store(data: objdata.DataSet) -> Store:
    """The parent's Store: built here and warmed (runtime, pool, both paths) before any fork."""
    store = data.store()
    warm = data.sample(10)
    data.require(objdata.read_sync(store, warm[:5]), warm[:5], "parent warm-up (get_sync)")
    data.require(objdata.read_async(store, warm[5:]), warm[5:], "parent warm-up (get)")
    return store


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Python >= 3.12 warns when a multi-threaded process forks; these tests fork one on purpose.
    for item in items:
        item.add_marker(
            pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
        )
