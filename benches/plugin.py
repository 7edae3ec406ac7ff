"""What ``pytest --forksafe`` costs: a generated suite run with and without the plugin, in one run.

1. 50 passing tests sharing a session fixture (a ``forksafe.fork_local`` client, warm in the
   parent): the suite's wall time without the flag, then with ``--forksafe`` (every fork path,
   one child each); the ratio of the medians of ``ROUNDS`` runs each, each run a fresh pytest
   process.
2. 5 tests whose every child hangs (a fixture holding a ThreadPoolExecutor), with
   ``--forksafe-deadline 1``: the time per test against the deadline. The children of all paths
   run at once, so a hanging test costs about one deadline (plus the stack dumps), not one per
   path.

``python benches/plugin.py [--write]``; with ``--write`` the table replaces the generated block
of docs/benchmarks.md between the PLUGIN markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = 50
HANGING = 5
ROUNDS = 3
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forksafe-plugin-bench-") as tmp:
        folder = Path(tmp)
        _suite(folder)
        plain = [_time(folder, "test_passing.py") for _ in range(ROUNDS)]
        # A long deadline: a passing child costs its run, not the deadline (a loaded machine
        # must not turn slow children into failures here).
        forked = [
            _time(folder, "test_passing.py", "--forksafe", "--forksafe-deadline", "60")
            for _ in range(ROUNDS)
        ]
        hanging = _time(folder, "test_hanging.py", "--forksafe", "--forksafe-deadline", "1")
    off, on = statistics.median(plain), statistics.median(forked)
    per_test = (on - off) / TESTS * 1000
    lines = [
        f"**`pytest --forksafe`** ({TESTS} passing tests, {PATHS} fork paths, one child each; "
        f"median of {ROUNDS} runs; CPython {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.0f} at the end)",
        "",
        "| suite | seconds | ratio |",
        "|---|---|---|",
        f"| without the plugin | {off:.2f} | 1.0x |",
        f"| `--forksafe` | {on:.2f} | {on / off:.1f}x |",
        f"| cost per test (`--forksafe` minus without, / {TESTS}) | {per_test / 1000:.3f} | - |",
        f"| {HANGING} tests whose every child hangs, `--forksafe-deadline 1` "
        f"| {hanging:.2f} ({hanging / HANGING:.2f} per test) | "
        f"{hanging / HANGING:.1f} deadlines per test (one per path would be {PATHS}) |",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        page = ROOT / "docs" / "benchmarks.md"
        text = page.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        page.write_text(text[:start] + "\n" + table + "\n" + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
