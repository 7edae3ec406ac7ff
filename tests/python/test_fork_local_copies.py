"""``fork_local`` copies share the value, as the Rust ``ForkLocal``'s clones do; ``detached()``
builds its own. Checked in the process and in children forked by every path."""

from __future__ import annotations

import copy
import os
import threading
from typing import Any

import forksafe
import forkutil
import pytest

BUILDS: list[int] = []


def _make() -> object:
    BUILDS.append(os.getpid())
    return object()


def _race(locals_: list[forksafe.ForkLocal[object]]) -> list[int]:
    """One thread per copy takes the first access at once; the ids of what each saw."""
    seen: list[int] = [0] * len(locals_)
    barrier = threading.Barrier(len(locals_))

    def get(i: int) -> None:
        barrier.wait()
        seen[i] = id(locals_[i].get())

    threads = [threading.Thread(target=get, args=(i,)) for i in range(len(locals_))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def test_copies_share_the_value_and_detached_builds_its_own() -> None:
    del BUILDS[:]
    original = forksafe.fork_local(_make)
    copies = [original, copy.copy(original), copy.deepcopy(original), copy.deepcopy([original])[0]]
    seen = _race(copies)
    assert len(set(seen)) == 1, seen
    assert BUILDS == [os.getpid()]
    own = original.detached()
    assert own.get() is not original.get()
    assert len(BUILDS) == 2


def _child(copies: list[forksafe.ForkLocal[object]]) -> dict[str, Any]:
    built_before = any(c.is_built() for c in copies)
    seen = _race([*copies, copy.copy(copies[0])])
    return {
        "built_before": built_before,
        "seen": seen,
        "builds_here": [pid for pid in BUILDS if pid == os.getpid()],
        "pid": os.getpid(),
    }


@pytest.mark.parametrize("path", forkutil.PATHS)
def test_after_a_fork_every_copy_sees_one_value_built_by_the_child(path: str) -> None:
    del BUILDS[:]
    original = forksafe.fork_local(_make)
    copies = [original, copy.copy(original), copy.deepcopy(original)]
    parent_ids = _race(copies)
    assert len(set(parent_ids)) == 1
    report = forkutil.run_child(_child, copies, path=path)
    assert report["built_before"] is False, report
    assert len(set(report["seen"])) == 1, report
    assert report["builds_here"] == [report["pid"]], "one build for every copy"
    # The parent's copies keep the parent's value.
    assert {id(c.get()) for c in copies} == set(parent_ids)
    assert BUILDS == [os.getpid()]
