"""What forksafe reports on platforms this machine is not: Windows' ``nofork`` guard.

The Windows build itself is only compile-checked (scripts/test runs cross-check); here the
doctor's handling of a ``nofork`` report runs for real, with the guard's answer substituted.
"""

from __future__ import annotations

from typing import Any

import forksafe
import pytest
from forksafe import _doctor


def test_the_native_guard_is_not_nofork_on_linux() -> None:
    assert forksafe.runtime_info()["guard"] in {"wipeonfork", "syscall"}


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
    monkeypatch.setattr(_doctor, "run_forks", no_forks)
    assert _doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "guard: nofork (this platform has no fork()" in out, out
    assert "means: this platform has no fork()" in out, out
    for method in ("os_fork", "c_fork", "raw_syscall"):
        assert f"{method:<12} not applicable (no fork() on this platform)" in out, out
