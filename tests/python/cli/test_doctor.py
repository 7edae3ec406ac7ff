"""``python -m forksafe doctor``: what this platform gives forksafe, verified by real forks.

The Windows build itself is only compile-checked (scripts/test runs the cross-check); here the
doctor's handling of a ``nofork`` report runs for real, with the guard's answer substituted.
"""

from __future__ import annotations

from typing import Any

import forksafe
import pytest
from cliutil import FORK_PATHS, run
from forksafe._cli import doctor


def test_doctor_verifies_every_fork_path_here() -> None:
    result = run("doctor", "--json")
    assert result.code == 0, result
    report = result.json()
    assert report["fork_paths"] == dict.fromkeys(FORK_PATHS, "covered"), result
    assert report["guard_verified_by_fork"] is True, result
    assert report["guard"] == forksafe.runtime_info()["guard"], result


def test_doctor_on_a_platform_without_fork(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = forksafe.runtime_info

    def nofork_info() -> dict[str, Any]:
        info = real()
        info["guard"] = "nofork"
        info["guard_reason"] = "this platform has no fork(): every access is the same process"
        return info

    def no_forks(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the doctor forked on a platform without fork()")

    monkeypatch.setattr(forksafe, "runtime_info", nofork_info)
    monkeypatch.setattr(doctor, "run_forks", no_forks)
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "guard: nofork (this platform has no fork()" in out, out
    assert "means: this platform has no fork()" in out, out
    for path in ("os_fork", "c_fork", "raw_syscall"):
        assert f"{path:<12} not applicable (no fork() on this platform)" in out, out
