"""What ``python -m forksafe check`` itself costs, against the tool before issue 23, in one run.

1. A passing snippet (``1 + 1``, every path, the default count): the wall time of the whole
   command with this tree's tool and with the tool at ``BASE`` (the commit before issue 23's
   work: no rates, no budget, no native evidence, no second run in the parent), interleaved,
   ``ROUNDS`` runs each; the ratio of the medians.
   The same on the 6 fork paths alone (no fresh interpreter's start-up).
2. On the 6 fork paths, a failing snippet that hangs every one (a warmed ThreadPoolExecutor)
   and a racy one (a crash in about half of the children whose fork ran Python's fork
   handlers, which raises the count on the other paths within ``--budget``): this tree's wall
   time, less the passing snippet's median on the same paths in the same run, against the
   bound "one deadline plus the budget".

3. Where grpcio is installed, the gRPC case of docs/design.md ("How close a child is to a plain
   fork"): a channel built in the parent with ``GRPC_ENABLE_FORK_SUPPORT=1``, the children's
   first RPC at once: how many children are wrong under ``check --paths os_fork`` (all at once,
   and ``--isolate``) and with plain ``os.fork()`` children made by hand, with and without a
   ``sched_yield`` before the RPC. The server runs in its own process on 127.0.0.1.

``python benches/check.py [--write]``; with ``--write`` the table replaces the generated block of
docs/benchmarks.md between the CHECK markers. The base's ``python/forksafe`` comes from
``git archive`` (with this install's native module beside it), on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _doc import publish  # benches/ is this script's directory, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
BASE = "a90229e"
"""The commit before issue 23's first (f436bf7, "check: failure rates per path, ...")."""
ROUNDS = 5
DEADLINE = 2.0
BUDGET = 10.0
BEGIN, END = "<!-- BEGIN CHECK -->", "<!-- END CHECK -->"
FORK_PATHS = "os_fork,mp_fork,c_fork,raw_syscall,thread_fork,nested"
"""The failing snippets run on the fork paths only: a fresh interpreter's start-up (seconds on
this machine) would hide a deadline behind it."""

HANG_SETUP = "from concurrent.futures import ThreadPoolExecutor\npool = ThreadPoolExecutor(1)"
HANG_CODE = "pool.submit(sum, [1, 2]).result()"
RACY_SETUP = """
import ctypes, os
fired = []
os.register_at_fork(after_in_child=lambda: fired.append(os.urandom(1)[0] < 128))
"""
RACY_CODE = "ctypes.string_at(0) if fired and fired[-1] else 1"


def base_tree(folder: Path) -> Path:
    """``BASE``'s python/forksafe under ``folder``, with this install's native module."""
    archive = subprocess.run(["git", "archive", BASE, "python/forksafe"], cwd=ROOT,
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    import forksafe

    installed = Path(forksafe.__file__).parent
    for native in installed.glob("_native*.so"):
        shutil.copy(native, folder / "python" / "forksafe" / native.name)
    return folder / "python"


def timed(args: list[str], pythonpath: Path | None = None) -> tuple[float, int]:
    """Seconds of one ``python -m forksafe check ARGS`` and its exit status."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "forksafe", "check", *args], cwd="/tmp",
                          env=env, capture_output=True, timeout=600)  # fmt: skip
    return time.monotonic() - started, done.returncode


def measure() -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {key: [] for key in ("base", "new", "base_forks",
                                                        "new_forks", "hang", "racy")}  # fmt: skip
    forks = ["--paths", FORK_PATHS]
    hang = [*forks, "--deadline", f"{DEADLINE:g}", "--setup", HANG_SETUP, HANG_CODE]
    racy = [*forks, "--deadline", f"{DEADLINE:g}", "--budget", f"{BUDGET:g}", "--setup",
            RACY_SETUP, RACY_CODE]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        base = base_tree(Path(folder))
        for _ in range(ROUNDS):
            for key, args, path, status in (
                ("base", ["1 + 1"], base, 0),
                ("new", ["1 + 1"], None, 0),
                ("base_forks", [*forks, "1 + 1"], base, 0),
                ("new_forks", [*forks, "1 + 1"], None, 0),
                ("hang", hang, None, 1),
                ("racy", racy, None, 1),
            ):
                seconds, code = timed(args, path)
                if code != status:
                    sys.exit(f"check {key} exited {code}, expected {status}")
                runs[key].append(seconds)
    return runs


GRPC_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "1", "GRPC_POLL_STRATEGY": "poll"}
GRPC_RUNS = 9
GRPC_COUNT = 5
GRPC_SERVER = """
import grpc
from concurrent import futures
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "echo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, _: request)}),))
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination(timeout=900)  # ends by itself if the bench is killed
"""
GRPC_SETUP = """
import os, grpc
channel = grpc.insecure_channel("127.0.0.1:" + os.environ["ECHO_PORT"])
echo = channel.unary_unary("/echo.Echo/Echo")
echo(b"warm", timeout=5)
"""
GRPC_CODE = 'echo(b"ping", timeout=5)'
GRPC_PLAIN = (
    GRPC_SETUP
    + """
import sys
children, at_once, first, leave = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
wrong = 0
for _ in range(children // at_once):
    pids = []
    for _ in range(at_once):
        pid = os.fork()
        if pid == 0:
            if first == "yield":
                os.sched_yield()
            try:
                echo(b"ping", timeout=5)
                code = 0
            except Exception:
                code = 1
            os._exit(code) if leave == "_exit" else sys.exit(code)
        pids.append(pid)
    wrong += sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in pids)
print(wrong)
"""
)


def grpc_case() -> list[tuple[str, int, int]]:
    """(what, wrong, children) for the gRPC case; [] without grpcio."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        print("benches/check.py: grpcio is not installed: the gRPC case is skipped")
        return []
    import json

    server = subprocess.Popen([sys.executable, "-c", GRPC_SERVER], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert server.stdout is not None
    env = {**os.environ, **GRPC_ENV, "ECHO_PORT": server.stdout.readline().strip()}
    found = []
    try:
        for label, extra, code in (
            ("check --paths os_fork", [], GRPC_CODE),
            ("check --paths os_fork --isolate", ["--isolate"], GRPC_CODE),
            ("check --paths os_fork, CODE yields first", [], "os.sched_yield(); " + GRPC_CODE),
        ):
            wrong = 0
            for _ in range(GRPC_RUNS):
                done = subprocess.run(
                    [sys.executable, "-m", "forksafe", "check", "--json", "--budget", "0",
                     "--paths", "os_fork", "--count", str(GRPC_COUNT), *extra,
                     "--setup", GRPC_SETUP, code],
                    cwd="/tmp", env=env, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                wrong += json.loads(done.stdout)["rows"][0]["failed"]
            found.append((label, wrong, GRPC_RUNS * GRPC_COUNT))
        children = GRPC_RUNS * GRPC_COUNT
        for at_once in (1, GRPC_COUNT):
            for first in ("now", "yield"):
                for leave in ("_exit", "exit"):
                    done = subprocess.run(
                        [sys.executable, "-c", GRPC_PLAIN, str(children), str(at_once), first,
                         leave],
                        cwd="/tmp", env=env, capture_output=True, text=True, timeout=600,
                    )  # fmt: skip
                    what = (f"plain os.fork(), {at_once} at a time, "
                            f"{'sched_yield, then ' if first == 'yield' else ''}the RPC, "
                            f"{'os._exit' if leave == '_exit' else 'sys.exit'}")  # fmt: skip
                    found.append((what, int(done.stdout.split()[-1]), children))
    finally:
        server.kill()
        server.wait()
    return found


def cost_table(runs: dict[str, list[float]]) -> list[str]:
    med = {key: statistics.median(values) for key, values in runs.items()}
    low = {key: min(values) for key, values in runs.items()}
    load = os.getloadavg()[0]
    lines = [
        f"**`check`'s cost** (median of {ROUNDS} interleaved runs, min in brackets; CPython "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.0f} at the "
        "end)",
        "",
        "| snippet | before issue 23 | this tree | ratio |",
        "|---|---|---|---|",
        f"| passing `1 + 1`, all 8 paths, 16 processes | {med['base']:.2f} s "
        f"({low['base']:.2f}) | {med['new']:.2f} s ({low['new']:.2f}) | "
        f"{med['new'] / med['base']:.2f}x |",
        f"| passing `1 + 1`, the 6 fork paths, 21 processes | {med['base_forks']:.2f} s "
        f"({low['base_forks']:.2f}) | {med['new_forks']:.2f} s ({low['new_forks']:.2f}) | "
        f"{med['new_forks'] / med['base_forks']:.2f}x |",
        "",
        "On the 6 fork paths (`--paths " + FORK_PATHS + "`), against the passing snippet on "
        "the same paths:",
        "",
        "| failing snippet | this tree | less the passing one | bound: one deadline + the "
        "budget | within |",
        "|---|---|---|---|---|",
    ]
    for key, what, bound in (
        ("hang", f"a warmed pool hangs every fork path, `--deadline {DEADLINE:g}`", DEADLINE),
        ("racy", f"a crash in about half the children, `--deadline {DEADLINE:g} --budget "
         f"{BUDGET:g}` (raises the count)", DEADLINE + BUDGET),
    ):  # fmt: skip
        extra = med[key] - med["new_forks"]
        lines.append(
            f"| {what} | {med[key]:.2f} s ({low[key]:.2f}) | {extra:.2f} s | {bound:g} s | "
            f"{'yes' if extra <= bound else 'NO'} ({extra / bound:.2f} of it) |"
        )
    return lines


def table(runs: dict[str, list[float]], grpc: list[tuple[str, int, int]]) -> str:
    lines = cost_table(runs) if runs else []
    if grpc:
        import grpc as grpcio

        lines += [
            "",
            f"**The gRPC case** (grpcio {grpcio.__version__}, `GRPC_ENABLE_FORK_SUPPORT=1 "
            "GRPC_POLL_STRATEGY=poll`, a channel built and used once in the parent, each "
            f"child's first RPC at once; check: {GRPC_RUNS} runs of `--count {GRPC_COUNT} "
            "--budget 0`)",
            "",
            "| children | wrong |",
            "|---|---|",
        ]
        lines += [f"| {what} | {wrong} of {children} |" for what, wrong, children in grpc]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--grpc-only", action="store_true", help="only the gRPC case (no write)")
    args, _ = parser.parse_known_args()  # scripts/bench passes its own arguments to each bench
    if args.grpc_only:
        print(table({}, grpc_case()))
        return
    text = table(measure(), grpc_case())
    publish(text, BEGIN, END, args.write)


if __name__ == "__main__":
    main()
