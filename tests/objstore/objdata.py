"""The test data set, its S3 endpoint, and the work a reading process does.

1,000 objects of mixed sizes (1 KiB to 1 MiB, most small, a long tail of large ones, about
86 MB in all) with deterministic contents and known SHA-256 checksums. Uploaded with plain
``urllib`` (not with the extension under test).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import forksafe
import forksafe_objstore
from forksafe_objstore import Store

HERE = Path(__file__).resolve().parent
BUCKET = "forksafe-objstore"
ACCESS_KEY = "forksafe-test-key"
SECRET_KEY = "forksafe-test-secret"
COUNT = 1000
KIB = 1024
MIB = 1024 * 1024


def object_size(index: int) -> int:
    """Sizes from 1 KiB to 1 MiB: the first two are the extremes, the rest skewed small."""
    if index == 0:
        return KIB
    if index == 1:
        return MIB
    u = random.Random(index * 7919).random()
    return int(KIB * 1024 ** (u * u))


def object_key(index: int) -> str:
    return f"objects/{index:04d}.bin"


def object_data(index: int) -> bytes:
    return random.Random(index).randbytes(object_size(index))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class DataSet:
    """The bucket's contents as the tests expect them."""

    endpoint: str
    keys: list[str]
    checksums: dict[str, str]
    sizes: dict[str, int]
    config: dict[str, Any] = field(default_factory=dict)

    def store(self) -> Store:
        """A new Store on the data set's bucket (built in the calling process)."""
        return Store.s3(BUCKET, **self.config)

    def sample(self, n: int, offset: int = 0) -> list[str]:
        """``n`` keys spread over the data set, the 1 MiB object always among them."""
        step = max(1, COUNT // n)
        picked = [self.keys[(offset + i * step) % COUNT] for i in range(n)]
        if self.keys[1] not in picked:
            picked[-1] = self.keys[1]
        return picked

    def problems(self, read: list[list[str]]) -> list[str]:
        """Every ``[key, sha256, size]`` read that does not match the bucket (empty if all do)."""
        wrong = []
        for key, digest, size in read:
            if self.checksums.get(key) != digest or self.sizes.get(key) != size:
                wrong.append(
                    f"{key}: checksum mismatch, read {size} bytes sha256 {digest[:16]}..., "
                    f"expected {self.sizes.get(key)} bytes sha256 "
                    f"{(self.checksums.get(key) or '?')[:16]}..."
                )
        return wrong

    def require(self, read: list[list[str]], expected_keys: list[str], who: str) -> None:
        got = [k for k, _, _ in read]
        assert sorted(got) == sorted(expected_keys), f"{who} read {len(got)} keys, not the shard"
        wrong = self.problems(read)
        assert not wrong, f"{who}: {len(wrong)} wrong objects:\n" + "\n".join(wrong[:10])


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stops a test server started with its stdin as the stop signal: closes stdin, then kills it
    if it has not exited within 15 s."""
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MotoServer:
    """moto's S3 server in a subprocess (moto_main.py) behind its keep-alive front end, with a
    start-up deadline. ``requests()`` reads the front end's connection log."""

    def __init__(self, deadline: float = 60.0) -> None:
        # stdout carries the port line only; the server's log goes to a file nobody must drain.
        self.log = tempfile.TemporaryFile()
        self.connection_log = tempfile.NamedTemporaryFile(prefix="objstore-connections-")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "moto_main.py"), self.connection_log.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.proc.stdout is not None
        line = b""
        expires = time.monotonic() + deadline
        while not line.endswith(b"\n"):
            remaining = expires - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, remaining))
            if not ready:
                self.stop()
                raise RuntimeError(f"moto server printed no port within {deadline:.0f} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.log.seek(0)
                tail = self.log.read()[-4000:].decode(errors="replace")
                raise RuntimeError(f"moto server exited before listening:\n{tail}")
            line += chunk
        first = line.decode().splitlines()[0]
        assert first.startswith("PORT "), f"unexpected moto output: {first!r}"
        self.port = int(first.split()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[int, str, str]]:
        """Every request the server received so far: (TCP connection number, method, path)."""
        with open(self.connection_log.name, encoding="utf-8") as log:
            lines = [line.split(" ", 2) for line in log.read().splitlines()]
        return [(int(number), method, path) for number, method, path in lines]

    def set_auth(self, enforced: bool) -> None:
        """Makes moto check request signatures (and refuse unknown keys) from now on, or not."""
        count = b"0" if enforced else b"inf"
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count,
            method="POST",
            headers={"Content-Type": "text/plain"},  # not a form: moto reads the raw body
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

    def stop(self) -> None:
        stop_server(self.proc)
        self.connection_log.close()


def _put(url: str, data: bytes) -> None:
    # An explicit type: urllib's default (a form) makes the server try to parse the body.
    headers = {"Content-Type": "application/octet-stream"}
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, (url, response.status)


def populate(server: MotoServer) -> DataSet:
    """Creates the bucket and uploads the 1,000 objects with urllib."""
    _put(f"{server.endpoint}/{BUCKET}", b"")
    keys = [object_key(i) for i in range(COUNT)]
    checksums: dict[str, str] = {}
    sizes: dict[str, int] = {}

    def upload(index: int) -> None:
        data = object_data(index)
        checksums[keys[index]] = sha(data)
        sizes[keys[index]] = len(data)
        _put(f"{server.endpoint}/{BUCKET}/{keys[index]}", data)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(COUNT)))
    return DataSet(
        endpoint=server.endpoint,
        keys=keys,
        checksums=checksums,
        sizes=sizes,
        config={
            "endpoint": server.endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
    )


# --------------------------------------------------------------------------------------------
# The work of a reading process
# --------------------------------------------------------------------------------------------


def digest(key: str, data: bytes) -> list[Any]:
    return [key, sha(data), len(data)]


async def _get_all(store: Store, keys: list[str]) -> list[list[Any]]:
    return [digest(key, await store.get(key)) for key in keys]


def read_sync(store: Store, keys: list[str]) -> list[list[Any]]:
    return [digest(key, store.get_sync(key)) for key in keys]


def read_async(store: Store, keys: list[str]) -> list[list[Any]]:
    """``await store.get`` for each key, on forksafe's background loop."""
    return forksafe.run(_get_all(store, keys), timeout=60)


def read_both(store: Store, keys: list[str], progress: Any = None) -> dict[str, Any]:
    """Half the keys through ``get_sync``, half through ``get`` awaited in ``forksafe.run``."""
    half = len(keys) // 2
    if progress:
        progress(f"get_sync x{half}")
    sync = read_sync(store, keys[:half])
    if progress:
        progress(f"get via forksafe.run x{len(keys) - half}")
    awaited = read_async(store, keys[half:])
    return {"sync": sync, "async": awaited}


def info() -> dict[str, Any] | None:
    return forksafe_objstore.process_info()


def check_child_info(child: dict[str, Any] | None, parent_pid: int) -> None:
    """The child built its own runtime (in the extension's copy of forksafe) and inherited the
    parent's. The control build has no such record: nothing to check there."""
    if forksafe_objstore.CONTROL:
        return
    assert child is not None
    assert child["pid"] != parent_pid, child
    assert child["runtimes_built"] == 1, child
    assert [parent_pid, 1] in [list(r) for r in child["inherited_runtimes"]], (child, parent_pid)
    expected_guard = "syscall" if os.environ.get("FORKSAFE_PID_CHECK") == "syscall" else None
    if expected_guard:
        assert child["guard"] == expected_guard, child
