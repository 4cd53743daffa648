"""The typed seams between the pure core and its adapters.

Each injected dependency is a ``typing.Protocol`` here; adapters implement them (gRPC and REST
sources, the google-cloud-pubsub publisher, the SQLite store) and tests call through them for
real. Pure module.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from lrobridge.core.codec import Snapshot


class OperationsSource(Protocol):
    """One server implementing google.longrunning.Operations, reached at ``url``.

    Every method raises a :class:`~lrobridge.errors.BridgeError`: ``NotFound`` for an unknown
    operation, ``Unimplemented`` when the server lacks the method, ``TransientError`` subclasses
    for what is worth retrying (UNAVAILABLE, DEADLINE_EXCEEDED, HTTP 429/5xx, connection errors),
    ``Unauthenticated`` / ``PermissionDenied`` for credentials, other ``PermanentError`` otherwise.
    """

    @property
    def url(self) -> str: ...

    def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        """GetOperation: the latest state."""
        ...

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        """WaitOperation: the state once done or after ``wait`` seconds, whichever comes first.

        ``timeout`` is the RPC deadline (a little above ``wait``). Raises ``Unimplemented`` when
        the server has no WaitOperation (REST sources always do: there is no HTTP mapping).
        """
        ...

    def cancel_operation(self, name: str, *, timeout: float) -> None: ...

    def delete_operation(self, name: str, *, timeout: float) -> None: ...

    def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[list[Snapshot], str]:
        """One page of ListOperations under ``parent`` and the next page token ('' at the end)."""
        ...

    def close(self) -> None: ...


class AsyncOperationsSource(Protocol):
    """The asyncio twin of :class:`OperationsSource`, for the watcher's event loop: the same
    calls, answers and errors. ``wait_operation`` raises ``Unimplemented`` when the server has
    no WaitOperation; a source bounds its own concurrent Get/List calls."""

    url: str

    async def get_operation(self, name: str, *, timeout: float) -> Snapshot: ...

    async def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot: ...

    async def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[list[Snapshot], str]: ...

    async def aclose(self) -> None: ...


class Publisher(Protocol):
    """Publishes completion messages; the future resolves once Pub/Sub acknowledged them."""

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        """Returns a future of the server-assigned message id."""
        ...

    def close(self) -> None: ...
