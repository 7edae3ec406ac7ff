"""The test extension's control probe (plain pyo3-async-runtimes, no PID guard) and forksafe's
own probe, each warmed in the parent by a session fixture."""

from __future__ import annotations

from typing import Any

import forksafe
import pytest


async def _control(value: int) -> Any:
    return await forksafe._native.testing.control_echo(value)


async def _echo(value: int) -> Any:
    return await forksafe.testing.echo(value)


@pytest.fixture(scope="session")
def warm() -> None:
    assert forksafe.run(_control(1)) == 1  # pyo3-async-runtimes' runtime exists before any fork
    assert forksafe.run(_echo(1)) == 1


def test_control_probe(warm: None) -> None:
    assert forksafe.run(_control(2)) == 2


def test_forksafe_probe(warm: None) -> None:
    assert forksafe.run(_echo(3)) == 3
