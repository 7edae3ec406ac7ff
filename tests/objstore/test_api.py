"""The extension's API in one process: both paths, listing, typed errors with the key, pickling,
the dataset, and the stub."""

from __future__ import annotations

import ast
import pickle
import re
import socket
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable

import forksafe
import forksafe_objstore
import objdata
import pytest
from forksafe_objstore import (
    CredentialsError,
    EndpointUnreachableError,
    KeyNotFoundError,
    ObjectDataset,
    ObjectStoreError,
    Store,
)


def run(call: Callable[[], Awaitable[Any]]) -> Any:
    """``await call()`` on forksafe's loop: the awaitable must be created inside the loop."""

    async def go() -> Any:
        return await call()

    return forksafe.run(go(), timeout=60)


def test_get_both_paths(store: Store, data: objdata.DataSet) -> None:
    keys = data.sample(20, offset=3)
    data.require(objdata.read_sync(store, keys), keys, "get_sync")
    data.require(objdata.read_async(store, keys), keys, "get")


def test_put_and_list_both_paths(store: Store) -> None:
    prefix = f"scratch/{uuid.uuid4().hex}"
    store.put_sync(f"{prefix}/a", b"sync")
    run(lambda: store.put(f"{prefix}/b", b"async"))
    assert store.get_sync(f"{prefix}/a") == b"sync"
    assert run(lambda: store.get(f"{prefix}/b")) == b"async"
    expected = [f"{prefix}/a", f"{prefix}/b"]
    assert sorted(run(lambda: store.list(prefix))) == expected
    assert sorted(store.list_sync(prefix)) == expected


def test_list_everything(store: Store, data: objdata.DataSet) -> None:
    listed = set(run(lambda: store.list()))
    assert set(data.keys) <= listed


def test_missing_key_is_typed_and_named(store: Store) -> None:
    key = f"missing/{uuid.uuid4().hex}"
    with pytest.raises(KeyNotFoundError, match=key):
        store.get_sync(key)
    with pytest.raises(KeyNotFoundError, match=key):
        run(lambda: store.get(key))
    assert issubclass(KeyNotFoundError, ObjectStoreError)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_typed_and_named() -> None:
    store = Store.s3(
        "bucket",
        endpoint=f"http://127.0.0.1:{_closed_port()}",
        access_key_id="k",
        secret_access_key="s",
    )
    with pytest.raises(EndpointUnreachableError, match="some/key"):
        store.get_sync("some/key")
    with pytest.raises(EndpointUnreachableError, match="other/key"):
        run(lambda: store.get("other/key"))


def test_bad_credentials_are_typed_and_named(
    moto: objdata.MotoServer, data: objdata.DataSet
) -> None:
    bad = Store.s3(
        objdata.BUCKET,
        endpoint=data.endpoint,
        access_key_id="AKIAWRONGWRONGWRONG0",
        secret_access_key="wrong",
    )
    moto.set_auth(True)
    try:
        with pytest.raises(CredentialsError, match=re.escape("objects/0000.bin")):
            bad.get_sync("objects/0000.bin")
        with pytest.raises(CredentialsError, match=re.escape("objects/0001.bin")):
            run(lambda: bad.get("objects/0001.bin"))
        with pytest.raises(CredentialsError, match="objects/"):
            bad.list_sync("objects/")
    finally:
        moto.set_auth(False)


def test_invalid_key_is_a_value_error(store: Store) -> None:
    with pytest.raises(ValueError, match="a//b"):
        store.get_sync("a//b")


def test_pickle_round_trip(store: Store, data: objdata.DataSet) -> None:
    copy = pickle.loads(pickle.dumps(store))
    assert isinstance(copy, Store)
    assert (copy.bucket, copy.endpoint) == (store.bucket, store.endpoint)
    key = data.keys[5]
    assert objdata.sha(copy.get_sync(key)) == data.checksums[key]


def test_object_dataset(store: Store, data: objdata.DataSet) -> None:
    dataset = ObjectDataset(store, data.keys[:7])
    assert len(dataset) == 7
    assert objdata.sha(dataset[6]) == data.checksums[data.keys[6]]
    assert objdata.sha(dataset[-1]) == data.checksums[data.keys[6]]
    with pytest.raises(IndexError):
        dataset[7]


def test_stub_matches_the_extension_module() -> None:
    native = forksafe_objstore._native
    stub = Path(native.__file__).with_name("_native.pyi")
    tree = ast.parse(stub.read_text())
    names = set()
    methods: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef) and node.name == "Store":
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    public = {n for n in dir(native) if not n.startswith("__")}
    assert names == public, (sorted(names ^ public),)
    store_public = {n for n in dir(Store) if not n.startswith("__")} | {"__reduce__"}
    assert methods == store_public, sorted(methods ^ store_public)
    assert (Path(native.__file__).parent / "py.typed").exists()
