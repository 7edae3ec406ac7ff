"""A child's drop of an inherited LocalFileSystem upload must not delete the parent's staging file.

object_store's ``LocalFileSystem`` writes a multipart upload to a staging file next to the object
(``<key>#<n>``) and renames it onto the object when the upload completes; dropping an unfinished
upload deletes the staging file (``LocalUpload``'s ``Drop``). A forked child that drops the
inherited upload would delete the *parent's* staging file, and the parent's upload would then
fail or lose its parts. The example's ``Writer`` leaks what it inherited instead of dropping it.

The parent starts an upload (``local_writer``) and writes its first part; children forked by
every path refuse to act on it (``write``, ``complete``, ``abort`` raise
``InheritedWriterError``), drop it and exit. The parent's staging file must still be there, and
the parent completes: the object is exactly the parent's bytes, and no staging file is left.
The first case shows object_store's drop in the owner: it does delete the staging file.
"""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from forksafe._cli.engine import calls
from forksafe_objstore import InheritedWriterError, Writer, local_writer

DEADLINE = float(os.environ.get("OBJSTORE_TEST_DEADLINE", "30"))


def part(seed: str) -> bytes:
    return hashlib.sha256(seed.encode()).digest() * 4096


def staging(root: Path, key: str) -> list[str]:
    """The staging files of ``key``'s uploads (``<key>#<n>``)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(f"{key}#"))


def test_owner_drop_deletes_the_staging_file(tmp_path: Path) -> None:
    """object_store's own behaviour, which the children must not trigger on the parent's."""
    writer = local_writer(str(tmp_path), "dropped.bin")
    writer.write(part("dropped"))
    assert staging(tmp_path, "dropped.bin"), "no staging file while the upload is open"
    del writer
    gc.collect()
    assert staging(tmp_path, "dropped.bin") == [], "the owner's drop left the staging file"


def _child(writer: Writer, root: str, key: str) -> dict[str, Any]:
    refused = {}
    for name in ("write", "complete", "abort"):
        try:
            if name == "write":
                writer.write(part(f"child-{os.getpid()}"))
            else:
                getattr(writer, name)()
        except InheritedWriterError:
            refused[name] = True
        else:
            refused[name] = False
    writer.__exit__(SystemExit, SystemExit(0), None)
    del writer
    gc.collect()  # this child's reference to the inherited writer goes here
    return {"pid": os.getpid(), "refused": refused, "staging": staging(Path(root), key)}


@pytest.mark.parametrize("path", calls.PATHS)
def test_child_drop_keeps_the_parents_staging_file(path: str, tmp_path: Path) -> None:
    key = f"object-{path}.bin"
    parts = [part(f"{key}/1"), part(f"{key}/2")]
    writer = local_writer(str(tmp_path), key)
    writer.write(parts[0])
    before = staging(tmp_path, key)
    assert len(before) == 1, before
    children = calls.spawn(
        _child,
        writer,
        str(tmp_path),
        key,
        count=2,
        together=path != "nested",
        path=path,
        deadline=DEADLINE,
    )
    failed = calls.failures(children)
    assert not failed, failed
    for child in children:
        for report in child.reports:
            if report is not None:
                assert all(report["refused"].values()), f"a child acted on the writer: {report}"
    assert staging(tmp_path, key) == before, (
        f"after its children the parent's staging file {before} is gone "
        f"({staging(tmp_path, key)}): a child's drop deleted it"
    )
    writer.write(parts[1])
    writer.complete()
    assert (tmp_path / key).read_bytes() == b"".join(parts), "the object is not the parent's"
    assert staging(tmp_path, key) == [], "a staging file is left after the upload completed"
