"""The benches' one way to publish: replace the marked block of docs/benchmarks.md.

Each bench owns a block between its ``<!-- BEGIN NAME -->`` and ``<!-- END NAME -->`` markers,
and ``--write`` replaces what is between them, so a table cannot drift from the run that made
it. A missing marker is an error, not an appended block: the page's order is the author's."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_between(begin: str, end: str, text: str, doc: Path = BENCHMARKS) -> None:
    """Replaces what is between the markers ``begin`` and ``end`` in ``doc`` with ``text``.

    Raises ``ValueError`` if a marker is missing."""
    page = doc.read_text()
    if begin not in page or end not in page:
        raise ValueError(f"{doc}: the markers {begin!r} and {end!r} are not both there")
    before, rest = page.split(begin, 1)
    after = rest.split(end, 1)[1]
    doc.write_text(f"{before}{begin}\n{text}\n{end}{after}")


def publish(text: str, begin: str, end: str, write: bool) -> None:
    """Prints a bench's table and, with ``--write`` (``write``), puts it in its block."""
    print(text)
    if write:
        write_between(begin, end, text)
