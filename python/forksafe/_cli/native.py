"""Native evidence about a stuck process, for when Python's stacks say nothing: the hang is in
C, C++ or Rust (a thread pool's join inside C ``exit()``, a lock in a fork handler).

For each thread: ``/proc/PID/task/TID/{comm,wchan,syscall,stat}``, the object mapped at its
program counter (``/proc/PID/maps``) and the package that object came from (the wheel, or
the system); then a backtrace of every thread from gdb or eu-stack when one is installed.
Known native hazards are recognised by their frames (:data:`HAZARDS`, one row each).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

BACKTRACE_SECONDS = 8.0
"""The longest a debugger may take for one process's backtrace."""


@dataclass(frozen=True)
class Hazard:
    """A native hazard known by its frames: ``frames`` must all match some frame, in any order."""

    name: str
    frames: tuple[str, ...]
    fix: str


HAZARDS = (
    Hazard(
        "parking_lot's parking table",
        (r"parking_lot_core",),
        "parking_lot keeps one global table of parked threads; after a fork it still links the "
        "parent's dead threads, in memory the child's new threads reuse, so the child's parks and "
        "wake-ups follow garbage: lost wake-ups (hangs) and crashes. Build the extension without "
        "tokio's parking_lot feature: `python -m forksafe doctor --cargo PATH/Cargo.toml` names "
        "the crate that turns it on; docs/extension-authors.md, "
        '"When a dependency turns on tokio\'s parking_lot", says how to narrow it.',
    ),
    Hazard(
        "a thread pool's join inside C exit()",
        (r"\b(exit|__run_exit_handlers|__cxa_finalize|_dl_fini)\b",
         r"(pthread_join|pthread_cond_wait|pthread_cond_timedwait|futex_wait|"
         r"__futex_abstimed_wait|thread::join|join)"),
        "a static thread pool's destructor joins its worker threads inside C exit(); those "
        "threads exist only in the parent. The library must skip the join in a forked child "
        "(compare getpid() with the pool's), or build the pool on first use per process; a "
        "worker can leave with os._exit, as multiprocessing's do.",
    ),
    Hazard(
        "glibc's malloc arena lock",
        (r"\b(__libc_malloc|malloc|_int_malloc|arena_get2|__libc_free|free|_int_free)\b",
         r"(__lll_lock_wait_private|lll_lock_wait|__lll_lock_wait)"),
        "a malloc arena's lock was held by a parent thread at the instant of fork. glibc's "
        "fork() resets its arenas, a raw clone does not: fork through fork() (os.fork), from a "
        "quiet process, or use spawn/forkserver workers.",
    ),
)  # fmt: skip


@dataclass
class Thread:
    """One native thread of a stuck process."""

    tid: int
    comm: str = ""
    state: str = ""
    wchan: str = ""
    syscall: str = ""
    pc: int | None = None
    where: str = ""  # the object mapped at the PC, with the offset
    package: str = ""

    def line(self) -> str:
        parts = [f"{self.tid} {self.comm!r} state {self.state or '?'}"]
        if self.syscall:
            parts.append(f"syscall {self.syscall}")
        if self.wchan and self.wchan != "0":
            parts.append(f"wchan {self.wchan}")
        if self.where:
            parts.append(f"at {self.where}" + (f" ({self.package})" if self.package else ""))
        return ", ".join(parts)


@dataclass
class Evidence:
    """What the native side of a process shows."""

    pid: int
    threads: list[Thread] = field(default_factory=list)
    backtrace: str = ""
    tool: str = ""  # the debugger that gave the backtrace, or why there is none
    hazards: list[Hazard] = field(default_factory=list)
    stuck: str = ""  # the innermost frame outside libc and the interpreter, and its package

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return {
            "threads": [t.line() for t in self.threads],
            "backtrace": self.backtrace,
            "tool": self.tool,
            "hazards": [{"name": h.name, "fix": h.fix} for h in self.hazards],
            "stuck": self.stuck,
        }


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode(errors="replace").strip()
    except OSError:
        return ""


Mapping = tuple[int, int, int, str]  # start, end, file offset, path


def mappings(pid: int) -> list[Mapping]:
    """The file-backed mappings of a process."""
    maps: list[Mapping] = []
    for line in _read(f"/proc/{pid}/maps").splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        maps.append((start, end, int(fields[2], 16), fields[5]))
    return maps


def locate(pc: int, maps: list[Mapping]) -> str:
    """``object+0xoffset`` for an address (the offset from the object's first mapping)."""
    for start, end, _offset, path in maps:
        if start <= pc < end:
            base = min(s for s, _, _, p in maps if p == path)
            return f"{path}+{pc - base:#x}"
    return f"{pc:#x} (not in a mapped file)"


_SITE = re.compile(r"/(?:site|dist)-packages/(?P<top>[^/]+)/")
_SYSTEM = ("/usr/", "/lib", "/opt/")
_RUNTIME = re.compile(
    r"/(libc|libm|libpthread|ld-linux[^/]*|libdl|librt|libffi|libgcc_s|libstdc\+\+|"
    r"libpython[^/]*|python[0-9.]*)(\.so[^/]*)?$|/_ctypes[^/]*\.so$"
)


def package_of(path: str) -> str:
    """Where a shared object came from: a wheel's top-level name (``pyarrow.libs`` ->
    ``pyarrow``), the system's library, or the file itself."""
    match = _SITE.search(path)
    if match:
        top = match["top"]
        return f"the {top.removesuffix('.libs').split('.')[0]} package ({os.path.basename(path)})"
    if path.startswith(_SYSTEM) and "/site-packages/" not in path:
        return "system: " + os.path.basename(path)
    return path


def _thread(pid: int, tid: int, maps: list[Mapping]) -> Thread:
    base = f"/proc/{pid}/task/{tid}"
    thread = Thread(tid, _read(f"{base}/comm"), wchan=_read(f"{base}/wchan"))
    stat = _read(f"{base}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    thread.state = fields[0] if fields else ""
    syscall = _read(f"{base}/syscall").split()
    pc = None
    if syscall and syscall[0] not in ("running", "-1"):
        thread.syscall = syscall[0]
        if len(syscall) >= 9:  # nr, six arguments, stack pointer, program counter
            pc = int(syscall[8], 16)
    elif syscall:
        thread.syscall = syscall[0]
    if not pc and len(fields) > 27 and fields[27].isdigit():  # kstkeip (0 on most kernels)
        pc = int(fields[27]) or None
    if pc:
        thread.pc = pc
        thread.where = locate(pc, maps)
        thread.package = package_of(thread.where.rsplit("+", 1)[0])
    return thread


def threads(pid: int) -> list[Thread]:
    """Every native thread of ``pid``, main thread first."""
    maps = mappings(pid)
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return []
    return [_thread(pid, tid, maps) for tid in tids]


def debugger() -> tuple[list[str], str] | None:
    """The command (before the PID) of an installed debugger, and its name."""
    gdb = shutil.which("gdb")
    if gdb:
        return [gdb, "-batch", "-nx", "-q", "-iex", "set auto-load off", "-ex",
                "thread apply all bt 12", "-p"], "gdb"  # fmt: skip
    stack = shutil.which("eu-stack")
    if stack:
        return [stack, "-i", "-p"], "eu-stack"
    return None


_KEPT = re.compile(r"^(Thread \d|#\d|TID |\(More stack frames)")


def backtrace(pid: int, timeout: float = BACKTRACE_SECONDS) -> tuple[str, str]:
    """Every thread's native backtrace and the tool's name (or why there is none)."""
    found = debugger()
    if found is None:
        return "", "neither gdb nor eu-stack is installed"
    command, name = found
    try:
        done = subprocess.run(
            [*command, str(pid)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        return "", f"{name} did not answer within {timeout:g} s"
    except OSError as exc:
        return "", f"{name} could not run: {exc}"
    lines = [line for line in done.stdout.splitlines() if _KEPT.match(line.strip())]
    text = "\n".join(lines)
    if "#0" not in text and "TID" not in text:
        return "", f"{name} gave no backtrace: {done.stderr.strip()[-300:] or 'no output'}"
    return text, name


_FRAME = re.compile(r"^#\d+\s+(?:(?P<address>0x[0-9a-f]+) in )?(?P<function>\S+)")


def stuck_frame(backtrace: str, maps: list[Mapping]) -> str:
    """The innermost frame outside libc, the dynamic loader and the interpreter: the code that
    waits, with the object it is in and where that came from."""
    for line in backtrace.splitlines():
        match = _FRAME.match(line.strip())
        if match is None or match["address"] is None:
            continue
        where = locate(int(match["address"], 16), maps)
        path = where.rsplit("+", 1)[0]
        if path.startswith("/") and not _RUNTIME.search(path):
            return f"{match['function']} in {os.path.basename(path)}, from {package_of(path)}"
    return ""


def recognise(frames: str) -> list[Hazard]:
    """The known hazards whose frames all appear in ``frames`` (a backtrace's text)."""
    return [h for h in HAZARDS if all(re.search(p, frames) for p in h.frames)]


def collect(pid: int, with_backtrace: bool = True, why: str = "") -> Evidence:
    """The native evidence of a live (stuck) process."""
    maps = mappings(pid)
    evidence = Evidence(pid, threads(pid))
    if with_backtrace:
        evidence.backtrace, evidence.tool = backtrace(pid)
    else:
        evidence.tool = why or "not taken"
    evidence.hazards = recognise(evidence.backtrace)
    evidence.stuck = stuck_frame(evidence.backtrace, maps)
    return evidence


def state(pid: int) -> str:
    """A process's state letter (``R`` running, ``S`` sleeping, ``Z``...), "" if gone."""
    fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return fields[0] if fields else ""


def catches(pid: int, signum: int) -> bool | None:
    """Whether ``pid`` has a handler for ``signum`` (``SigCgt`` of /proc/PID/status); None if
    unknown."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return None
