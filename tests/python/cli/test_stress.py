"""``python -m forksafe stress``: the fork engine with forksafe's own probes, on every path."""

from __future__ import annotations

from cliutil import FORK_PATHS, by_path, run


def test_stress_keeps_its_table_and_exit_code() -> None:
    result = run("stress", "--count", "3", "--depth", "2")
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "path", "forks", "ok", "hung", "wrong", "crashed", "p50", "ms", "p99", "ms",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:8]}
    assert list(rows) == FORK_PATHS, result
    for path, row in rows.items():
        forks = "6" if path == "nested" else "3"
        assert row[:5] == [forks, forks, "0", "0", "0"], (path, result)
    assert lines[-1].endswith("all children correct"), result


def test_stress_json_has_the_exit_column_too() -> None:
    result = run("stress", "--count", "2", "--paths", "os_fork,spawn", "--json")
    assert result.code == 0, result
    rows = by_path(result.json())
    assert rows["spawn"]["ok"] == 2 and rows["os_fork"]["hangs_at_exit"] == 0, result


def test_methods_is_an_alias_of_paths() -> None:
    result = run("stress", "--count", "1", "--methods", "c_fork", "--json")
    assert result.code == 0, result
    assert list(by_path(result.json())) == ["c_fork"], result
    result = run("stress", "--methods", "os_fork,vfork", timeout=30)
    assert result.code == 2 and "unknown path(s) ['vfork']" in result.stderr, result
