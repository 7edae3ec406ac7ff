"""What ``pytest --forksafe`` costs: a generated suite run with and without the plugin, in one run.

1. 50 passing tests sharing a session fixture (a ``forksafe.fork_local`` client, warm in the
   parent): the suite's wall time without the flag, then with ``--forksafe`` (every fork path,
   one child each); the ratio of the medians of ``ROUNDS`` runs each, each run a fresh pytest
   process.
   The rounds alternate (without, with, without...), so a change in the machine's load
   weighs on both sides; the load average is printed at the start and at the end.
2. 5 tests whose every child hangs (a fixture holding a ThreadPoolExecutor), with
   ``--forksafe-deadline 1``: the time per test against the deadline. The children of all paths
   run at once, so a hanging test costs about one deadline (plus the stack dumps), not one per
   path.
3. What the ``pytest11`` entry point costs a pytest run without the flag, ``python -X importtime``
   with pytest already imported (as it is when pytest loads its plugins): the entry module
   ``_forksafe_pytest`` against ``forksafe._cli``, what the entry point imported before its own
   module when it lived in the package (the native module, asyncio). Median of ``IMPORTS``
   fresh interpreters each.

``python benches/plugin.py [--write]``; with ``--write`` the table replaces the generated block
of docs/benchmarks.md between the PLUGIN markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _doc import publish  # benches/ is this script's directory, first on sys.path

TESTS = 50
HANGING = 5
ROUNDS = 3
IMPORTS = 15
PATHS = 6  # the engine's fork paths (os_fork, mp_fork, c_fork, raw_syscall, thread_fork, nested)
BEGIN, END = "<!-- BEGIN PLUGIN -->", "<!-- END PLUGIN -->"

PASSING = """
import forksafe, pytest

@pytest.fixture(scope="session")
def client():
    made = forksafe.fork_local(lambda: {"pid": __import__("os").getpid(), "calls": 0})
    made.get()
    return made

"""

HANGS = """
import concurrent.futures, pytest

@pytest.fixture(scope="session")
def pool():
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    executor.submit(int).result()
    return executor

"""


def _suite(folder: Path) -> None:
    passing = [PASSING] + [
        f"def test_{n}(client):\n    client.get()['calls'] += 1\n    assert sum(range({n})) >= 0\n"
        for n in range(TESTS)
    ]
    (folder / "test_passing.py").write_text("\n".join(passing))
    hanging = [HANGS] + [
        f"def test_{n}(pool):\n    assert pool.submit(int).result() == 0\n" for n in range(HANGING)
    ]
    (folder / "test_hanging.py").write_text("\n".join(hanging))


def _time(folder: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    expected = 1 if "test_hanging.py" in args else 0
    if done.returncode != expected:
        raise SystemExit(f"pytest {' '.join(args)} exited {done.returncode}:\n{done.stdout}")
    return elapsed


def _import_us(module: str) -> int:
    """Microseconds ``import module`` takes in a fresh interpreter that imported pytest first
    (``-X importtime``: the cumulative times of the top-level imports after pytest's)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import pytest; import {module}"],
        cwd="/tmp", capture_output=True, text=True, check=True,
    )  # fmt: skip
    top = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$")  # a top-level import
    rows = [(m[2], int(m[1])) for m in map(top.match, done.stderr.splitlines()) if m]
    names = [name for name, _ in rows]
    if "pytest" not in names or module not in names:
        raise SystemExit(f"no importtime lines for {module}:\n{done.stderr[-2000:]}")
    after = len(names) - names[::-1].index("pytest")
    return sum(us for _, us in rows[after:])


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (5 min: {five:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    load_start = _load()
    entry = statistics.median(_import_us("_forksafe_pytest") for _ in range(IMPORTS))
    package = statistics.median(_import_us("forksafe._cli") for _ in range(IMPORTS))
    plain: list[float] = []
    forked: list[float] = []
    with tempfile.TemporaryDirectory(prefix="forksafe-plugin-bench-") as tmp:
        folder = Path(tmp)
        _suite(folder)
        for _ in range(ROUNDS):  # alternating, so that the load weighs on both sides
            plain.append(_time(folder, "test_passing.py"))
            # A long deadline: a passing child costs its run, not the deadline (a loaded
            # machine must not turn slow children into failures here).
            forked.append(
                _time(folder, "test_passing.py", "--forksafe", "--forksafe-deadline", "60")
            )
        hanging = _time(folder, "test_hanging.py", "--forksafe", "--forksafe-deadline", "1")
    off, on = statistics.median(plain), statistics.median(forked)
    per_test = (on - off) / TESTS
    lines = [
        f"**`pytest --forksafe`** ({TESTS} passing tests, {PATHS} fork paths, one child each; "
        f"median of {ROUNDS} alternating runs; CPython {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; load average {load_start} at the start, {_load()} at the end)",
        "",
        "| suite | seconds | ratio |",
        "|---|---|---|",
        f"| without the plugin | {off:.2f} | 1.0x |",
        f"| `--forksafe` | {on:.2f} | {on / off:.1f}x |",
        f"| cost per test (`--forksafe` minus without, / {TESTS}) | {per_test:.3f} | - |",
        f"| {HANGING} tests whose every child hangs, `--forksafe-deadline 1` "
        f"| {hanging:.2f} ({hanging / HANGING:.2f} per test) | "
        f"{hanging / HANGING:.1f} deadlines per test (one per path would be {PATHS}) |",
        "",
        f"**The entry point in a run without the flag** (`python -X importtime -c 'import pytest; "
        f"import M'`, cumulative, median of {IMPORTS})",
        "",
        "| M | ms | ratio |",
        "|---|---|---|",
        f"| `forksafe._cli` (what the entry point imported when it lived in the package) "
        f"| {package / 1000:.1f} | 1.0x |",
        f"| `_forksafe_pytest` (the entry point now) | {entry / 1000:.2f} "
        f"| {package / entry:.0f}x less |",
    ]
    table = "\n".join(lines)
    publish(table, BEGIN, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
