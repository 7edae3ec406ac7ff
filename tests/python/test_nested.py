"""Forks five generations deep: every generation works, and leaks exactly one more runtime."""

from __future__ import annotations

from typing import Any

import forkutil
import pytest

GENERATIONS = 5


def _deadline(level: int) -> float:
    # Inner generations give up first, so a hang is reported by its own parent.
    return forkutil.CHILD_DEADLINE + 5.0 * (GENERATIONS - 1 - level)


def _generation(level: int, values: list[str], path: str) -> dict[str, Any]:
    report = forkutil.exercise(values[level])
    forkutil.progress(f"generation {level + 1} of {GENERATIONS} exercised")
    child = None
    if level + 1 < GENERATIONS:
        forkutil.progress(f"generation {level + 1} forks generation {level + 2}")
        outcome = forkutil.spawn_child(
            _generation, level + 1, values, path, path=path, deadline=_deadline(level + 1)
        )
        child = outcome.summary()
        forkutil.progress(f"generation {level + 2}: {outcome.describe()}")
        # This generation must still work after its child came and went.
        again = forkutil.exercise(values[level])
        assert again["loop_id"] == report["loop_id"], (again, report)
        assert again["fork_local"] == report["fork_local"], (again, report)
    return {"level": level, "report": report, "child": child}


@pytest.mark.parametrize("path", ["os_fork", "c_fork"])
def test_five_generations(path: str, parent_report: dict[str, Any]) -> None:
    values = [forkutil.new_value(f"gen{level + 1}") for level in range(GENERATIONS)]
    top = forkutil.run_child(_generation, 0, values, path, path=path, deadline=_deadline(0))
    reports = []
    node = top
    while True:
        assert node["level"] == len(reports), node
        reports.append(node["report"])
        child = node["child"]
        if child is None:
            break
        if not child["ok"]:
            pytest.fail(f"generation {len(reports) + 1}: {child['description']}", pytrace=False)
        node = child["report"]
    assert len(reports) == GENERATIONS

    parent = parent_report
    base_depth = parent_report["info"]["depth"]
    base_inherited = len(parent_report["info"]["inherited_runtimes"])
    for generation, (report, v) in enumerate(zip(reports, values), start=1):
        forkutil.check(report, v, parent)
        assert report["info"]["depth"] == base_depth + generation
        assert len(report["info"]["inherited_runtimes"]) == base_inherited + generation
        parent = report
    assert len({report["pid"] for report in reports} | {parent_report["pid"]}) == GENERATIONS + 1

    after = forkutil.exercise_parent()
    assert after["loop_id"] == parent_report["loop_id"]
    assert after["fork_local"] == parent_report["fork_local"]
    assert after["info"] == parent_report["info"]
