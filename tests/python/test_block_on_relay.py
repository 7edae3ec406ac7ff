"""``block_on`` in a child forked on a tokio worker reuses one thread, not a thread per call.

A child forked on one of its parent's tokio workers (Python called from a bridged task forks)
cannot enter a runtime on that thread: tokio's ``CONTEXT`` there still holds the parent's
scheduler. ``forksafe::python::block_on`` runs the future on another thread of the child. That
thread is the process's relay (``forksafe-block-on``), started on the first call and reused:
after 1,000 sync calls the child has exactly one relay thread, the one the first call started.
(Before, each call started and joined a thread of its own: 1,000 threads per 1,000 calls.)
Every fork path, both guard modes, with and without the GIL.
"""

from __future__ import annotations

import os
import time
from typing import Any

import forksafe
import forkutil
import pytest
from forksafe import _native

pytestmark = pytest.mark.skipif(
    not _native.CONTROL_PROBE, reason="needs the test wheel (--features control-probe)"
)

CALLS = 1000
RELAY = "forksafe-block-on"
COMM = RELAY[:15]
"""The name as /proc shows it (``comm``: 15 bytes at most)."""


def _named_like_the_relay() -> list[int]:
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue  # exited meanwhile
        if name == COMM:
            found.append(int(tid))
    return sorted(found)


def _relay_threads() -> list[int]:
    """The TIDs of this process's threads named like the relay.

    A thread the relay has just started (a runtime worker, a blocking-pool thread) carries the
    relay's name until it names itself, which under load can take a while: a second name is
    read again for up to a second before it counts."""
    found = _named_like_the_relay()
    for _ in range(50):
        if len(found) <= 1:
            break
        time.sleep(0.02)
        found = _named_like_the_relay()
    return found


def _child_calls(v: str) -> dict[str, Any]:
    """In the child, on the thread inherited from the parent's tokio worker."""
    before = _relay_threads()
    assert forksafe.testing.echo_sync(v) == v
    first = _relay_threads()
    for i in range(CALLS - 1):
        assert forksafe.testing.echo_sync(i) == i
    return {
        "pid": os.getpid(),
        "before": before,
        "after_first": first,
        "after_all": _relay_threads(),
    }


def _fork_here(path: str, v: str) -> dict[str, Any]:
    """Called on a tokio worker of the parent: forks there and waits for the child."""
    return forkutil.spawn_child(_child_calls, v, path=path).require()


ON_ANOTHER_THREAD = {"thread_fork"}
"""Paths that fork from a thread of their own, not the thread they are called on: the child's
thread is a fresh Python thread, never the parent's worker, so ``block_on`` runs right there."""


@pytest.mark.parametrize("path", forkutil.PATHS)
def test_block_on_on_an_inherited_worker_reuses_one_thread(
    path: str, parent_report: dict[str, Any]
) -> None:
    v = forkutil.new_value("relay")

    async def main() -> Any:
        return await _native.testing.call_on_worker(lambda: _fork_here(path, v))

    child = forksafe.run(main())
    assert child["pid"] != os.getpid(), child
    assert child["before"] == [], f"a relay thread before the first call: {child}"
    relays = child["after_all"]
    if path in ON_ANOTHER_THREAD:
        assert relays == [], f"a relay on a thread that is no inherited worker: {child}"
    else:
        # (Right after the first call, the runtime's new workers may still show the name of the
        # thread that started them: comm is inherited until each names itself.)
        assert len(relays) == 1, (
            f"after {CALLS} calls the child should have one relay thread ({RELAY}), found "
            f"{relays}: block_on ran each call on a thread of its own"
        )
        assert relays[0] in child["after_first"], (
            f"the relay {relays} is not the thread the first call started "
            f"({child['after_first']}): block_on started threads per call"
        )
    forkutil.exercise_parent()
