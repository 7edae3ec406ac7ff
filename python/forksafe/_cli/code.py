"""CODE, the user's code that ``check`` runs: compiled once, run in the parent and in every
child, its value compared by ``repr``, and the atexit handlers it registers recorded.

atexit has no public way to list its handlers. check records them: before ``--setup`` runs it
wraps ``atexit.register`` and ``atexit.unregister`` (children inherit the wrapper), so it can
name every handler your code registers; ``atexit._ncallbacks()`` counts the ones registered
before (by the standard library or by forksafe's own imports), which it reports as a number.
"""

from __future__ import annotations

import ast
import atexit
import hashlib
import linecache
import sys
import threading
import traceback
import types
from collections.abc import Sequence
from typing import Any, Callable

from .engine import Work

MODULE = "__check__"
"""The module CODE and ``--setup`` run in (so functions they define pickle by reference)."""

SETUP = "<setup>"
"""The file name of ``--setup`` in tracebacks and stacks."""

REPR_LIMIT = 2000
"""Characters of a value's ``repr`` that the reports keep."""


class BadInput(Exception):
    """CODE or its setup cannot be checked: exit status 2."""


# --------------------------------------------------------------------------------------------
# atexit bookkeeping
# --------------------------------------------------------------------------------------------


def describe(func: object) -> str:
    """``module.qualname`` of a callable (of the function a ``functools.partial`` wraps)."""
    inner = getattr(func, "func", None)
    if inner is not None and callable(inner):  # functools.partial
        func = inner
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


def exit_waits(multiprocessing_exit: bool) -> dict[str, Any]:
    """In a child about to exit: what threading's shutdown will run and join (a
    :meth:`~.engine.Work.exit_info` for any work), and how a multiprocessing child leaves."""
    me = threading.current_thread()
    callbacks = getattr(threading, "_threading_atexits", [])  # threading._register_atexit
    info: dict[str, Any] = {
        "threading_atexit": [describe(f) for f in reversed(callbacks)],
        "threads_joined": [t.name for t in threading.enumerate() if t is not me and not t.daemon],
    }
    if multiprocessing_exit:
        info["note"] = (
            "multiprocessing children do not run atexit handlers: they leave through "
            "util._exit_function() and threading._shutdown(), then os._exit"
        )
    return info


def _ncallbacks() -> int | None:
    count = getattr(atexit, "_ncallbacks", None)
    return int(count()) if callable(count) else None


class AtexitRegistry:
    """Records the atexit handlers registered after :meth:`install` (atexit cannot list them)."""

    def __init__(self) -> None:
        self.entries: list[Callable[..., Any]] = []
        self.installed = False

    def install(self) -> None:
        """Wraps ``atexit.register`` and ``atexit.unregister``; idempotent."""
        if self.installed:
            return
        self.installed = True
        original_register, original_unregister = atexit.register, atexit.unregister

        def register(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
            result = original_register(func, *args, **kwargs)
            self.entries.append(func)
            return result

        def unregister(func: Callable[..., Any]) -> None:
            original_unregister(func)
            self.entries = [f for f in self.entries if f != func]

        register.__doc__ = original_register.__doc__
        unregister.__doc__ = original_unregister.__doc__
        # The wrapper takes what atexit.register takes; its signature is only spelt looser.
        atexit.register = register  # type: ignore[assignment]
        atexit.unregister = unregister

    def names(self) -> list[str]:
        """The recorded handlers, in the order they run (last registered first)."""
        return [describe(f) for f in reversed(self.entries)]

    def unnamed(self) -> int | None:
        """Handlers registered outside the record (before it was installed)."""
        count = _ncallbacks()
        return None if count is None else max(0, count - len(self.entries))


REGISTRY = AtexitRegistry()

# --------------------------------------------------------------------------------------------
# CODE
# --------------------------------------------------------------------------------------------


def _source(filename: str, text: str) -> None:
    """Makes tracebacks show the lines of CODE and --setup."""
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)


def _compile(text: str, filename: str) -> tuple[types.CodeType, types.CodeType | None]:
    """CODE as statements and, if it ends with an expression, that expression (its value)."""
    tree = ast.parse(text, filename, "exec")
    last: types.CodeType | None = None
    final = tree.body[-1] if tree.body else None
    if isinstance(final, ast.Expr):
        tree.body.pop()
        last = compile(ast.Expression(final.value), filename, "eval")
    return compile(tree, filename, "exec"), last


def user_traceback(exc: BaseException, filenames: Sequence[str]) -> str:
    """The traceback from the first frame of the user's code on (check's own frames dropped)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename not in filenames:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<repr() raised {type(exc).__name__}: {exc}>"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode(errors="replace")).hexdigest()


def shorten(text: str) -> str:
    return text if len(text) <= REPR_LIMIT else text[:REPR_LIMIT] + "...(cut)"


class CodeWork(Work):
    """The user's CODE, compared with the parent's value, with the exit check."""

    exit_check = True

    def __init__(self, code: str, filename: str, setup: str, compare: bool) -> None:
        self.code, self.filename, self.setup, self.compare = code, filename, setup, compare
        self.expected_digest = ""
        self.expected_repr = ""
        self._compiled: tuple[types.CodeType, types.CodeType | None] | None = None
        self._namespace: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:  # compiled code and the namespace stay here
        return {**self.__dict__, "_compiled": None, "_namespace": None}

    def compile(self) -> None:
        """Compiles setup and CODE; raises BadInput on a syntax error."""
        for text, filename in ((self.setup, SETUP), (self.code, self.filename)):
            _source(filename, text)
            try:
                compiled = _compile(text, filename)
            except SyntaxError as exc:
                where = "--setup" if filename == SETUP else "CODE"
                message = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
                raise BadInput(f"{where} is not valid Python:\n{message}") from None
            if filename == self.filename:
                self._compiled = compiled

    def start(self) -> None:
        """Records atexit handlers, makes the module, runs setup; BadInput if setup raises."""
        if self._compiled is None:
            self.compile()
        REGISTRY.install()
        module = types.ModuleType(MODULE)
        module.__dict__["__file__"] = self.filename
        sys.modules[MODULE] = module
        self._namespace = module.__dict__
        try:
            exec(compile(self.setup, SETUP, "exec"), self._namespace)
        except BaseException as exc:
            raise BadInput(
                "--setup raised:\n" + user_traceback(exc, [SETUP, self.filename])
            ) from None

    def evaluate(self) -> object:
        """Runs CODE once in this process; returns the value of its last expression (or None)."""
        assert self._compiled is not None and self._namespace is not None
        statements, last = self._compiled
        exec(statements, self._namespace)
        return None if last is None else eval(last, self._namespace)

    def expect(self, value: object) -> str:
        """Keeps the parent's value for comparison; returns its repr."""
        text = _repr(value)
        self.expected_digest, self.expected_repr = _digest(text), shorten(text)
        return text

    def same(self, value: object) -> str | None:
        """None if ``value`` is what the parent got first (or values are not compared); else
        its repr."""
        text = _repr(value)
        if not self.compare or _digest(text) == self.expected_digest:
            return None
        return shorten(text)

    # -- in the children ----------------------------------------------------------------------

    def prepare_fresh(self) -> None:
        self.compile()
        self.start()

    def run(self, value: int) -> dict[str, Any]:
        try:
            result = self.evaluate()
        except BaseException as exc:  # SystemExit from CODE is a result too
            detail = "CODE raised:\n" + user_traceback(exc, [self.filename, SETUP])
            return {"ok": False, "raised": True, "detail": detail}
        text = _repr(result)
        ok = not self.compare or _digest(text) == self.expected_digest
        payload: dict[str, Any] = {"ok": ok, "repr": shorten(text)}
        if not ok:
            payload["detail"] = f"returned {shorten(text)}; the parent got {self.expected_repr}"
        return payload

    def exit_info(self, multiprocessing_exit: bool) -> dict[str, Any]:
        info = exit_waits(multiprocessing_exit)
        if not multiprocessing_exit:
            info["atexit"] = REGISTRY.names()
            info["atexit_unnamed"] = REGISTRY.unnamed()
        return info
