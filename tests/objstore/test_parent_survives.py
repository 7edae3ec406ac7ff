"""The parent survives its children: after children that used what they inherited, the parent's
own runtime, connection pool and epoll instances still serve it (issue 24, item 6).

The parent holds forksafe state that is in use at the instant of fork: the example's runtime
(its ``Store`` warm, its pool holding keep-alive connections to the front end of moto_main.py,
which keeps connections open as real S3 does) and forksafe's background asyncio loop with bridged
calls on it. It forks children by every fork path; each child uses the inherited ``Store``
(``put_sync``, ``get_sync``, ``await get``) and a bridged call, then exits. Meanwhile (on the paths
that allow a parent thread at the fork) a parent thread keeps serving the same calls. Then:

* every call of the parent, during and after its children, returned the right value, none hung,
  and the server logged each of the parent's PUTs exactly once (no request lost, none retried);
* the server's log, where every key names the PID of the process that asked for it, shows no TCP
  connection carrying requests of two processes;
* whether the parent's calls after its children went out on connections its pool held before
  is printed, not asserted (a new connection there is an open case of issue 24: see the note in
  the test);
* the parent still has the extension's one runtime (built here, none inherited) and the same
  epoll instances, and every registration on each of them is one of the parent's own open
  descriptors (``/proc/self/fdinfo``): no child registered a socket of its own there (the
  object_store case of issue 24: a child on an inherited runtime put its socket on the
  parent's epoll instance, and the parent's next requests hung).

test_control.py runs this test against the naive build (the client and the runtime shared with
every child), where it must fail.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import traceback
from typing import Any

import forksafe
import objdata
import pytest
from forksafe._cli.engine import calls, paths
from forksafe_objstore import Store

DEADLINE = float(os.environ.get("OBJSTORE_TEST_DEADLINE", "30"))
"""Seconds a child gets, and the parent's calls after its children (well under one each)."""

CHILDREN = 2
CHILD_CALLS = 4
PREFIX = "survive"
KEY = re.compile(rf"/{PREFIX}/(\d+)/")
STALE = {row.name for row in paths.ROWS if row.stale}


def payload(pid: int, tag: str) -> bytes:
    """What a process writes under its key ``tag``: distinct per process and key."""
    return hashlib.sha256(f"{pid}/{tag}".encode()).digest() * 64


def key_of(pid: int, tag: str) -> str:
    return f"{PREFIX}/{pid}/{tag}.bin"


async def _bridged(store: Store, key: str, v: str) -> tuple[bytes, str]:
    """``await store.get`` and a bridged echo of forksafe's own, on the background loop."""
    return await store.get(key), await forksafe.testing.echo(v)


def one_round(store: Store, tag: str) -> list[str]:
    """One round of the calls every process makes: a PUT, a GET by each path, a bridged echo.
    Returns what was wrong (empty if nothing)."""
    pid = os.getpid()
    key, data = key_of(pid, tag), payload(pid, tag)
    store.put_sync(key, data)
    wrong = []
    if store.get_sync(key) != data:
        wrong.append(f"{key}: get_sync returned other bytes")
    got, echoed = forksafe.run(_bridged(store, key, tag), timeout=DEADLINE)
    if got != data:
        wrong.append(f"{key}: await get returned other bytes")
    if echoed != tag:
        wrong.append(f"bridged echo returned {echoed!r}, not {tag!r}")
    return wrong


def _child(index: int, store: Store) -> dict[str, Any]:
    """In a child: the inherited store and the bridged calls, then leave (the engine's exit)."""
    wrong: list[str] = []
    for i in range(CHILD_CALLS):
        calls.progress(f"round {i}")
        wrong += one_round(store, f"c{index}-{i}")
    calls.progress("done")
    return {"pid": os.getpid(), "wrong": wrong, "info": objdata.info()}


class Rounds:
    """What one of the parent's series of calls did."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.rounds: list[str] = []
        self.problems: list[str] = []

    def run_round(self, store: Store) -> bool:
        tag = f"{self.tag}-{len(self.rounds)}"
        try:
            self.problems += one_round(store, tag)
        except Exception:
            self.problems.append(f"round {tag} raised:\n{traceback.format_exc()}")
            return False
        self.rounds.append(tag)
        return True


class Serving(Rounds):
    """The parent's calls on a thread, round after round until stopped; a hang is a failure."""

    def __init__(self, store: Store, tag: str) -> None:
        super().__init__(tag)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store,), name=f"parent-{tag}", daemon=True
        )
        self._thread.start()

    def _run(self, store: Store) -> None:
        while not self._stop.is_set() and self.run_round(store):
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE)
        if self._thread.is_alive():
            self.problems.append(
                f"the parent's calls while its children ran hung: no round finished within "
                f"{DEADLINE:.0f} s ({len(self.rounds)} rounds done)"
            )


def serve_rounds(store: Store, tag: str, count: int) -> Rounds:
    """``count`` rounds on a thread of their own, waited for with the deadline."""
    rounds = Rounds(tag)
    done = threading.Event()

    def run() -> None:
        try:
            for _ in range(count):
                if not rounds.run_round(store):
                    return
        finally:
            done.set()

    threading.Thread(target=run, name=f"parent-{tag}", daemon=True).start()
    if not done.wait(DEADLINE):
        rounds.problems.append(
            f"the parent's calls {tag} hung: {len(rounds.rounds)} of {count} rounds done "
            f"within {DEADLINE:.0f} s"
        )
    return rounds


def epoll_state() -> dict[int, list[tuple[int, int]]]:
    """Each epoll instance this process has open: its fd -> registrations (target fd, inode)."""
    state: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                text = info.read()
        except OSError:
            continue  # closed meanwhile (a listing's own descriptor)
        state[fd] = [
            (int(tfd), int(ino, 16))
            for tfd, ino in re.findall(r"tfd:\s*(\d+).*?ino:([0-9a-f]+)", text)
        ]
    return state


def foreign_registrations(state: dict[int, list[tuple[int, int]]]) -> list[str]:
    """Registrations that are not one of this process's open descriptors (same number, same
    file): made by another process that shares the epoll instance."""
    foreign = []
    for epfd, registrations in state.items():
        for tfd, ino in registrations:
            try:
                mine = os.stat(f"/proc/self/fd/{tfd}").st_ino
            except OSError:
                mine = None
            if mine != ino:
                foreign.append(f"epoll fd {epfd}: target fd {tfd} (inode {ino:#x}), ours {mine}")
    return foreign


def pids_per_connection(log: list[tuple[int, str, str]]) -> dict[int, set[int]]:
    """For each TCP connection, the PIDs named by the keys of the requests it carried."""
    seen: dict[int, set[int]] = {}
    for number, _method, path in log:
        found = KEY.search(path)
        if found:
            seen.setdefault(number, set()).add(int(found.group(1)))
    return seen


def _pid_in(path: str) -> int | None:
    """The PID a logged request's key names, if any."""
    found = KEY.search(path)
    return int(found.group(1)) if found else None


def key_in(path: str) -> str:
    """The key a logged request path names (path-style: ``/<bucket>/<key>?<query>``)."""
    return path.split("?", 1)[0].removeprefix(f"/{objdata.BUCKET}/")


@pytest.mark.parametrize("path", calls.PATHS)
def test_parent_survives_children_on_every_path(
    path: str, moto: objdata.MotoServer, store: Store
) -> None:
    me = os.getpid()
    seen = len(moto.requests())
    # Sequential: the pool holds idle keep-alive connections at the fork.
    before = serve_rounds(store, f"{path}-before", 3)
    assert not before.problems, before.problems
    info_before = objdata.info()
    runtime_before = forksafe.runtime_info()["pid"]
    epolls_before = epoll_state()

    during: Serving | None = None
    if path in STALE:
        time.sleep(0.3)  # a C-level or raw fork: no parent thread running (test_fork.quiesce)
    else:
        during = Serving(store, f"{path}-during")
    children = calls.spawn(
        _child, store, count=CHILDREN, indexed=True, together=path != "nested", path=path,
        deadline=DEADLINE,
    )  # fmt: skip
    if during is not None:
        during.stop()
    mark = len(moto.requests())  # everything logged before the parent's calls after its children
    after = serve_rounds(store, f"{path}-after", 3)

    problems: list[str] = []
    failed = calls.failures(children)
    if failed:
        problems.append(f"children: {failed}")
    for child in children:
        parent = me
        for report in child.reports:
            if report is None:
                continue
            problems += [f"child {report['pid']}: {w}" for w in report["wrong"]]
            objdata.check_child_info(report["info"], parent)
            parent = report["pid"]  # a chain's next generation
    for serving in (during, after):
        if serving is not None:
            problems += [f"parent {serving.tag}: {p}" for p in serving.problems]
    if during is not None and not during.rounds and not during.problems:
        problems.append("the parent made no call while its children ran")

    log = moto.requests()[seen:]
    per_connection = pids_per_connection(log)
    assert per_connection, "the server logged no request with a process's key"
    shared = {n: sorted(p) for n, p in per_connection.items() if len(p) > 1}
    if shared:
        problems.append(f"connections (number: PIDs) that carried two processes: {shared}")

    # No request lost, none retried: each of the parent's PUTs reached the server once.
    series = [s for s in (before, during, after) if s is not None]
    puts = {key_of(me, tag): 0 for s in series for tag in s.rounds}
    for _n, method, logged in log:
        if method == "PUT" and key_in(logged) in puts:
            puts[key_in(logged)] += 1
    not_once = {key: n for key, n in puts.items() if n != 1}
    if not_once:
        problems.append(f"the parent's PUTs not logged exactly once (key: times): {not_once}")

    # The parent's calls after its children went out on connections its pool already held:
    # connections that carried the parent's requests before (in this test or an earlier one: the
    # pool keeps idle connections across tests, and picks any of them).
    full = moto.requests()
    held = {n for n, _m, logged in full[:mark] if _pid_in(logged) == me}
    after_keys = {key_of(me, tag) for tag in after.rounds}
    used_after = {n for n, _m, logged in full[mark:] if key_in(logged) in after_keys}
    if used_after - held:
        # Open (issue 24): now and then (1 of 6 paths in one CI run, under load) the parent's
        # calls after its children go out on a new connection, though none is lost or shared
        # (both asserted above). How its held connections ended, from the front end's log, says
        # whether its pool dropped them or the server closed them. Printed, not asserted.
        ended = {n: how for n, method, how in full if method == "CLOSED" and n in held}
        print(
            f"\nNOTE {path}: after its children the parent opened connections "
            f"{sorted(used_after - held)}; its pool held {sorted(held)}, of which ended before "
            f"or meanwhile: {ended or 'none'} (open, issue 24)"
        )

    info_after = objdata.info()
    if info_after != info_before:
        problems.append(f"the extension's forksafe state changed: {info_before} -> {info_after}")
    if info_after is not None and (
        info_after["runtimes_built"] != 1 or info_after["inherited_runtimes"]
    ):
        problems.append(f"the parent's runtime is not its own: {info_after}")
    if forksafe.runtime_info()["pid"] != runtime_before:
        problems.append("forksafe's runtime changed in the parent")
    epolls_after = epoll_state()
    new = sorted(set(epolls_after) - set(epolls_before))
    if new:
        problems.append(f"new epoll instances in the parent: {new}")
    foreign = foreign_registrations(epolls_after)
    if foreign:
        problems.append(
            "registrations of another process on the parent's epoll instances:\n  "
            + "\n  ".join(foreign[:10])
        )
    assert not problems, f"{path}: the parent did not survive its children:\n" + "\n".join(problems)
