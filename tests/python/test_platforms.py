"""The guard forksafe picks on this platform (the doctor's ``nofork`` report, for platforms
without fork(), is tested in cli/test_doctor.py)."""

from __future__ import annotations

import forksafe


def test_the_native_guard_is_not_nofork_on_linux() -> None:
    assert forksafe.runtime_info()["guard"] in {"wipeonfork", "syscall"}
