"""An S3 reader that survives fork(): forksafe's reference integration.

``Store`` is object_store's plain ``AmazonS3Builder`` plus one line,
``.with_http_connector(ForkLocalConnector::default())``: each process gets its own HTTP client
(connection pool included), so a ``Store`` built in a parent works in every child, whatever the
fork path, and a child never touches the parent's sockets.

    store = Store.s3("bucket", endpoint="http://127.0.0.1:9000",
                     access_key_id="...", secret_access_key="...")
    data = store.get_sync("key")                  # sync, GIL released
    data = forksafe.run(store.get("key"))         # async, from any thread

``ObjectDataset(store, keys)`` is a map-style dataset for ``torch.utils.data.DataLoader``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forksafe_objstore._native import (
    CONTROL,
    CredentialsError,
    EndpointUnreachableError,
    InheritedWriterError,
    KeyNotFoundError,
    ObjectStoreError,
    Store,
    Writer,
    _process_info,
    local_writer,
)

__all__ = [
    "CONTROL",
    "CredentialsError",
    "EndpointUnreachableError",
    "InheritedWriterError",
    "KeyNotFoundError",
    "ObjectDataset",
    "ObjectStoreError",
    "Store",
    "Writer",
    "local_writer",
    "process_info",
]


def process_info() -> dict[str, Any] | None:
    """This extension's forksafe state in this process (``None`` in the control build)."""
    return _process_info()


class ObjectDataset:
    """A map-style dataset: ``dataset[i]`` is the bytes of ``keys[i]``, read with ``get_sync``.

    Usable as a ``torch.utils.data.Dataset`` without importing torch (it has ``__len__`` and
    ``__getitem__``). Build it in the parent; each DataLoader worker, forked or spawned, reads
    through its own client.
    """

    def __init__(self, store: Store, keys: Sequence[str]) -> None:
        self.store = store
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> bytes:
        if not -len(self.keys) <= index < len(self.keys):
            raise IndexError(f"ObjectDataset index {index} out of range ({len(self.keys)} keys)")
        return self.store.get_sync(self.keys[index])

    def __repr__(self) -> str:
        return f"ObjectDataset({self.store!r}, <{len(self.keys)} keys>)"
