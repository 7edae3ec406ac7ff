"""fork_local: a lazily built value per process, rebuilt after fork."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from ._owner import PerProcess

T = TypeVar("T")


class ForkLocal(Generic[T]):
    """A value built by ``factory`` on first use in each process.

    In a forked child, ``get()`` builds a new value instead of returning the parent's. The
    inherited value is never closed, used or garbage-collected: closing an inherited socket,
    HTTP session, DB connection or gRPC channel can tear down state the parent still uses.

    Copies share the value, as the Rust ``ForkLocal``'s clones do: ``copy.copy`` and
    ``copy.deepcopy`` (so also an object that holds one and is deep-copied) return a
    ``fork_local`` that sees the same value in every process, built once per process by
    whichever copy is used first. ``detached()`` returns one with the same factory and a value
    of its own.
    """

    __slots__ = ("_factory", "_per_process")

    def __init__(self, factory: Callable[[], T]) -> None:
        if not callable(factory):
            raise TypeError(f"fork_local() needs a callable factory, got {factory!r}")
        self._factory = factory
        self._per_process: PerProcess[tuple[T]] = PerProcess()

    def get(self) -> T:
        """This process's value. If the factory raises, the error propagates and the next
        ``get()`` tries again."""
        record = self._per_process.record()
        built = record.state
        if built is None:
            with record.lock:
                built = record.state
                if built is None:
                    built = (self._factory(),)
                    record.state = built
        return built[0]

    def detached(self) -> ForkLocal[T]:
        """A ``fork_local`` with the same factory and its own value (once per process)."""
        return ForkLocal(self._factory)

    def __copy__(self) -> ForkLocal[T]:
        return self._sharing()

    def __deepcopy__(self, memo: dict[int, object]) -> ForkLocal[T]:
        # Never deep-copies the per-process records: their locks and values are live state.
        return self._sharing()

    def _sharing(self) -> ForkLocal[T]:
        twin: ForkLocal[T] = ForkLocal.__new__(ForkLocal)
        twin._factory = self._factory
        twin._per_process = self._per_process
        return twin

    def is_built(self) -> bool:
        """Whether this process already built its value."""
        return self._per_process.record().state is not None

    def __repr__(self) -> str:
        return f"<fork_local {self._factory!r}>"


def fork_local(factory: Callable[[], T]) -> ForkLocal[T]:
    """A per-process lazy value: ``fork_local(make_client).get()``."""
    return ForkLocal(factory)
