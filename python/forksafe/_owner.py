"""Per-process ownership, shared by the background loop and fork-local values.

Every object that owns per-process state keeps one record per process in a dict keyed by
``_native.process_token()``: an identifier of the calling process that no descendant shares
(the native guard's record address; with the wipe-on-fork guard it also survives PID reuse).

Claiming a record is a single ``dict.setdefault``, atomic with the GIL and without it (a
free-threaded build locks each dict itself), so racing threads of one process agree on one record
without taking any lock a parent thread could have held at fork.
Each record's own lock is created by the process that claims it, so only that process's threads
ever wait on it. Inherited records stay in the dict forever: their values are never closed,
used, or garbage-collected (a collected socket or loop could close state the parent still uses).
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

from . import _native

R = TypeVar("R")

process_token: Callable[[], int] = _native.process_token


class Owned(Generic[R]):
    """The record of one process: a lock made by that process, and its lazily built state."""

    __slots__ = ("lock", "state", "token")

    def __init__(self, token: int) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.state: R | None = None


class PerProcess(Generic[R]):
    """Maps each process (by token) to its own :class:`Owned` record."""

    __slots__ = ("_mine", "_records")

    def __init__(self) -> None:
        self._records: dict[int, Owned[R]] = {}
        self._mine: Owned[R] | None = None

    def record(self) -> Owned[R]:
        """This process's record; its ``state`` may still be ``None``."""
        token = process_token()
        mine = self._mine
        if mine is not None and mine.token == token:
            return mine
        mine = self._records.setdefault(token, Owned(token))
        self._mine = mine
        return mine
