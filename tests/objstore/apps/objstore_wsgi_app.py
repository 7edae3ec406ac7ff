"""A WSGI app for ``gunicorn --preload`` that serves objects from the S3 bucket.

With ``--preload`` the master imports this module: it builds the Store and reads through it
(both paths), so every worker is forked with the master's warm runtime, loop and connection pool
in memory and their threads gone. ``GET /?key=K&path=sync|async|fresh`` answers with the object's
bytes, read in the worker with ``get_sync``, ``await get`` (through ``forksafe.run``) or a Store
built in the worker; headers say which process read it and what it built.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any, Callable
from urllib.parse import parse_qs

import forksafe
import forksafe_objstore
from forksafe_objstore import Store

CONFIG = json.loads(os.environ["OBJSTORE_TEST_CONFIG"])
MASTER_PID = os.getpid()
STORE = Store.s3(CONFIG["bucket"], **CONFIG["store"])


async def _get(store: Store, key: str) -> bytes:
    return await store.get(key)


# Warm everything in the master, before the fork.
STORE.get_sync(CONFIG["warm"][0])
forksafe.run(_get(STORE, CONFIG["warm"][1]), timeout=30)


def read(key: str, path: str) -> bytes:
    if path == "sync":
        return STORE.get_sync(key)
    if path == "async":
        return forksafe.run(_get(STORE, key), timeout=30)
    if path == "fresh":
        return Store.s3(CONFIG["bucket"], **CONFIG["store"]).get_sync(key)
    raise ValueError(f"unknown path {path!r}")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        data = read(query["key"][0], query.get("path", ["sync"])[0])
        status = "200 OK"
    except Exception:
        data = traceback.format_exc().encode()
        status = "500 Internal Server Error"
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(data))),
        ("X-Worker-Pid", str(os.getpid())),
        ("X-Master-Pid", str(MASTER_PID)),
        ("X-Objstore-Info", json.dumps(forksafe_objstore.process_info())),
    ]
    start_response(status, headers)
    return [data]
