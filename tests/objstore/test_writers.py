"""Nothing lost through inherited writers: an upload in flight in the parent at the fork, its
children on every fork path, and the parent's object exactly the parent's (issue 24, item 5).

The parent starts a writer (``Store.writer``: a multipart upload, or object_store's
``BufWriter`` with ``buffer=``), writes its first part, and forks while the second part is being
written (on a parent thread, on the paths that allow one at the fork). Each child holds the
inherited writer and does what a library's code can do with it: ``write``, ``complete``,
``abort`` (each must raise ``InheritedWriterError`` and send nothing), the ``__exit__`` of a
``with`` block it unwinds through (a ``SystemExit`` after ``os.fork()``: must do nothing), and
drops it; then it leaves (the engine's normal exit, finalisers run; ``os._exit`` on the paths
that leave that way). Then the parent writes its last part and completes. The object must be
exactly the parent's bytes with the ETag of the parent's parts, and the server's log (the
keep-alive front end of moto_main.py logs every request) must show each of the upload's
requests once: its creation, one PUT per part, one completion, and no abort.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time
import urllib.request
from typing import Any

import objdata
import pytest
from forksafe._cli.engine import calls, paths
from forksafe_objstore import InheritedWriterError, Store, Writer

DEADLINE = float(os.environ.get("OBJSTORE_TEST_DEADLINE", "30"))
PART = 5 * 1024 * 1024
"""S3's (and moto's) smallest part but the last."""

STALE = {row.name for row in paths.ROWS if row.stale}
KINDS = ["multipart", "buffered"]


def chunk(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def multipart_etag(parts: list[bytes]) -> str:
    """S3's ETag of a multipart object: the MD5 of its parts' MD5s, and the part count."""
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def _refused(writer: Writer, name: str) -> str:
    """Calls ``name`` on the inherited writer: the refusal's text, or ``NOT REFUSED``."""
    calls.progress(f"{name} on the inherited writer")
    try:
        if name == "write":
            writer.write(chunk(f"child-{os.getpid()}", PART))
        else:
            getattr(writer, name)()
    except InheritedWriterError as e:
        return str(e)
    return "NOT REFUSED"


def _child(index: int, writer: Writer) -> dict[str, Any]:
    """In a child: every way code can act on the inherited writer; none may reach the server."""
    refused = {name: _refused(writer, name) for name in ("write", "complete", "abort")}
    calls.progress("__exit__ of a with block unwinding (SystemExit)")
    suppressed = writer.__exit__(SystemExit, SystemExit(0), None)
    owner = writer.owner_pid
    del writer
    gc.collect()  # the engine holds the inherited writer too; it goes at the child's exit
    calls.progress("done")
    return {"pid": os.getpid(), "refused": refused, "suppressed": suppressed, "owner": owner}


def upload_requests(log: list[tuple[int, str, str]], key: str) -> list[tuple[str, str]]:
    """(method, query) of every request the server logged on ``key``."""
    found = []
    for _number, method, logged in log:
        path, _, query = logged.partition("?")
        if path == f"/{objdata.BUCKET}/{key}":
            found.append((method, query))
    return found


def head_etag(endpoint: str, key: str) -> str:
    request = urllib.request.Request(f"{endpoint}/{objdata.BUCKET}/{key}", method="HEAD")
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.headers["ETag"])


@pytest.mark.parametrize("path", calls.PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_inherited_writer_loses_nothing(
    kind: str, path: str, moto: objdata.MotoServer, store: Store
) -> None:
    me = os.getpid()
    key = f"writers/{me}/{kind}-{path}.bin"
    parts = [chunk(f"{key}/1", PART), chunk(f"{key}/2", PART), chunk(f"{key}/3", PART // 3)]
    seen = len(moto.requests())
    writer = store.writer(key, buffer=PART if kind == "buffered" else None)
    assert writer.owner_pid == me and writer.kind == kind, writer
    writer.write(parts[0])

    # The second part in flight at the fork: written on a parent thread (none at a C-level or
    # raw fork, which must happen with no other Python thread running).
    errors: list[BaseException] = []

    def second() -> None:
        try:
            writer.write(parts[1])
        except BaseException as e:
            errors.append(e)

    writing = None
    if path in STALE:
        writer.write(parts[1])
        time.sleep(0.3)
    else:
        writing = threading.Thread(target=second, name="parent-writer", daemon=True)
        writing.start()
    children = calls.spawn(
        _child,
        writer,
        count=2,
        indexed=True,
        together=path != "nested",
        path=path,
        deadline=DEADLINE,
    )
    if writing is not None:
        writing.join(DEADLINE)
        assert not writing.is_alive(), "the parent's second part hung"
    assert not errors, errors

    problems: list[str] = []
    failed = calls.failures(children)
    if failed:
        problems.append(f"children: {failed}")
    for child in children:
        for report in child.reports:
            if report is None:
                continue
            not_refused = {k: v for k, v in report["refused"].items() if v == "NOT REFUSED"}
            if not_refused:
                problems.append(
                    f"child {report['pid']} acted on the parent's writer: {not_refused}"
                )
            if report["suppressed"] is not False or report["owner"] != me:
                problems.append(f"child {report['pid']}: {report}")

    writer.write(parts[2])
    etag = writer.complete()
    data = store.get_sync(key)
    expected = b"".join(parts)
    if data != expected:
        problems.append(
            f"the object is not the parent's: {len(data)} bytes sha256 "
            f"{hashlib.sha256(data).hexdigest()[:16]}, expected {len(expected)} bytes "
            f"{hashlib.sha256(expected).hexdigest()[:16]}"
        )
    # The parts as the endpoint received them: each write one part (multipart), or chunks of
    # the buffer's size (BufWriter).
    if kind == "multipart":
        sent = parts
    else:
        sent = [expected[i : i + PART] for i in range(0, len(expected), PART)]
    want_etag = multipart_etag(sent)
    stored_etag = head_etag(moto.endpoint, key)
    if stored_etag != want_etag or (kind == "multipart" and etag != want_etag):
        problems.append(
            f"ETag: stored {stored_etag}, completion returned {etag}, the parent's parts give "
            f"{want_etag}"
        )

    requests = upload_requests(moto.requests()[seen:], key)
    creates = [q for m, q in requests if m == "POST" and q.startswith("uploads")]
    uploads = sorted(q for m, q in requests if m == "PUT" and "partNumber=" in q)
    completes = [q for m, q in requests if m == "POST" and q.startswith("uploadId=")]
    aborts = [q for m, q in requests if m == "DELETE"]
    plain_puts = [q for m, q in requests if m == "PUT" and "partNumber=" not in q]
    if (len(creates), len(uploads), len(completes), aborts, plain_puts) != (
        1,
        len(sent),
        1,
        [],
        [],
    ):
        problems.append(
            f"the server's log on {key}: {len(creates)} creations, {len(uploads)} part uploads "
            f"(the parent sent {len(sent)}), {len(completes)} completions, aborts {aborts}, "
            f"plain PUTs {plain_puts}:\n  " + "\n  ".join(f"{m} ?{q}" for m, q in requests)
        )
    assert not problems, f"{kind} on {path}:\n" + "\n".join(problems)
