from collections.abc import Awaitable
from typing import Any, Literal

Connector = Literal["fork-local", "spawned", "reqwest", "fork-local-store"]
"""How each process gets the store's HTTP client: forksafe's ForkLocalConnector (the default),
its SpawnedConnector, object_store's plain ReqwestConnector (the negative control: a child
inherits the parent's pool), or the whole store in a per-instance ForkLocal (the recipe for
clients with no connector hook)."""

ObjectStoreVersion = Literal["0.13", "0.14"]

Roots = Literal["inherited", "per-process"]
"""With object_store 0.14: the system's root certificates read once when the Store is built and
inherited by children as plain data ("inherited"), or read again by each process's client build
("per-process", object_store's default; always so with 0.13)."""

CONTROL: bool
"""True only in the negative-control build (never shipped)."""

class ObjectStoreError(Exception): ...
class KeyNotFoundError(ObjectStoreError): ...
class CredentialsError(ObjectStoreError): ...
class EndpointUnreachableError(ObjectStoreError): ...

class Store:
    @staticmethod
    def s3(
        bucket: str,
        *,
        endpoint: str,
        access_key_id: str,
        secret_access_key: str,
        region: str = "us-east-1",
        allow_http: bool = True,
        connector: Connector = "fork-local",
        object_store: ObjectStoreVersion = "0.14",
        metadata_endpoint: str | None = None,
        roots: Roots = "inherited",
    ) -> Store: ...
    def get(self, key: str) -> Awaitable[bytes]: ...
    def put(self, key: str, data: bytes) -> Awaitable[None]: ...
    def list(self, prefix: str = "") -> Awaitable[list[str]]: ...
    def get_sync(self, key: str) -> bytes: ...
    def put_sync(self, key: str, data: bytes) -> None: ...
    def list_sync(self, prefix: str = "") -> list[str]: ...
    @property
    def bucket(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def connector(self) -> Connector: ...
    @property
    def object_store(self) -> ObjectStoreVersion: ...
    def __reduce__(
        self,
    ) -> tuple[Any, tuple[str, str, str, str, str, bool, str, str, str | None]]: ...
    @staticmethod
    def _rebuild(
        bucket: str,
        endpoint: str,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        allow_http: bool,
        connector: Connector = "fork-local",
        object_store: ObjectStoreVersion = "0.14",
        metadata_endpoint: str | None = None,
    ) -> Store: ...

def _process_info() -> dict[str, Any] | None: ...
def _build_runtime() -> None: ...
def _build_client(store: Store) -> None: ...
