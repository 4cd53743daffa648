"""Operations sources (adapters): open one from its URL, and keep one open per URL.

``open_source(url)`` picks the adapter from the URL (see :mod:`lrobridge.core.source_url`):

* ``grpc://host:port``  -> :class:`~lrobridge.adapters.sources.grpc_source.GrpcSource`, plaintext;
* ``grpcs://host:port`` -> ``GrpcSource`` over TLS with Application Default Credentials;
* ``http://host[:port]/vN`` -> :class:`~lrobridge.adapters.sources.rest_source.RestSource`;
* ``https://host/vN``   -> ``RestSource`` with ADC (``AuthorizedSession``).

``open_async_source(url)`` opens the asyncio twin of each (``AsyncGrpcSource`` on ``grpc.aio``,
``AsyncRestSource`` on ``httpx``) under the same URL and credential rules, for the watcher's event
loop; the sync sources serve the facade's Cancel/Delete and the Pub/Sub-driven mode.

Credentials and connections are created on first call, never when a source is opened, so code
(and unit tests) can open sources without ADC or network. :class:`SourceRegistry` caches one
open source per normalized URL for the watcher and the API, and closes them all at shutdown.

This package is an adapter: it may import gRPC, requests and google-auth (pyproject.toml's
banned-api rule lists it as such); the core sees only :class:`lrobridge.ports.OperationsSource`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lrobridge.adapters.sources.grpc_aio_source import (
    AsyncGrpcSource,
    insecure_aio_channel_factory,
    secure_aio_channel_factory,
)
from lrobridge.adapters.sources.grpc_source import (
    GrpcSource,
    insecure_channel_factory,
    secure_channel_factory,
)
from lrobridge.adapters.sources.rest_aio_source import AsyncRestSource
from lrobridge.adapters.sources.rest_source import (
    DEFAULT_POOL_SIZE,
    RestSource,
    authorized_session_factory,
    plain_session_factory,
)
from lrobridge.core.source_url import (
    DEFAULT_CREDENTIAL_HOSTS,
    SourceURL,
    check_credential_host,
    split_source_url,
)
from lrobridge.errors import Unavailable
from lrobridge.ports import AsyncOperationsSource, OperationsSource

__all__ = [
    "AsyncGrpcSource",
    "AsyncRestSource",
    "AsyncSourceRegistry",
    "GrpcSource",
    "RestSource",
    "SourceRegistry",
    "open_async_source",
    "open_source",
]


def open_source(
    url: str,
    *,
    credentials: object | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    credential_hosts: tuple[str, ...] = DEFAULT_CREDENTIAL_HOSTS,
) -> OperationsSource:
    """The source for ``url`` (InvalidArgument if the URL is not a source URL).

    ``credentials`` (a ``google.auth.credentials.Credentials``) replaces Application Default
    Credentials for ``grpcs``/``https``; plaintext schemes ignore it. ``pool_size`` is the number
    of HTTP connections a REST source keeps (size it to the watcher's concurrency); a gRPC source
    multiplexes every call over one channel. Secure sources on a host outside
    ``credential_hosts`` are refused (InvalidArgument), so the bridge's credentials go nowhere
    else.
    """
    parts = _checked(url, credential_hosts)
    normalized = str(parts)
    if parts.scheme == "grpc":
        return GrpcSource(normalized, insecure_channel_factory(parts.target))
    if parts.scheme == "grpcs":
        return GrpcSource(normalized, secure_channel_factory(parts.target, credentials))
    if parts.scheme == "http":
        return RestSource(normalized, plain_session_factory(pool_size))
    return RestSource(normalized, authorized_session_factory(credentials, pool_size))


def open_async_source(
    url: str,
    *,
    credentials: object | None = None,
    max_concurrency: int = DEFAULT_POOL_SIZE,
    credential_hosts: tuple[str, ...] = DEFAULT_CREDENTIAL_HOSTS,
) -> AsyncOperationsSource:
    """The asyncio source for ``url``, under the same rules as :func:`open_source` (the URL,
    the credential hosts, ADC for ``grpcs``/``https``); call it on the loop that will use it.
    At most ``max_concurrency`` Get/List calls run at once on it."""
    parts = _checked(url, credential_hosts)
    normalized = str(parts)
    if parts.scheme == "grpc":
        factory = insecure_aio_channel_factory(parts.target)
        return AsyncGrpcSource(normalized, factory, max_concurrency=max_concurrency)
    if parts.scheme == "grpcs":
        factory = secure_aio_channel_factory(parts.target, credentials)
        return AsyncGrpcSource(normalized, factory, max_concurrency=max_concurrency)
    secure = credentials if credentials is not None else "adc"
    return AsyncRestSource(
        normalized,
        credentials=secure if parts.scheme == "https" else None,
        max_concurrency=max_concurrency,
    )


def _checked(url: str, credential_hosts: tuple[str, ...]) -> SourceURL:
    parts = split_source_url(url)
    check_credential_host(parts, credential_hosts)  # again here: watches outlive settings
    return parts


class AsyncSourceRegistry:
    """One open asyncio source per normalized URL, for one event loop; ``aclose()`` closes
    them all. ``get`` after ``aclose`` raises :class:`~lrobridge.errors.Unavailable`."""

    def __init__(self, opener: Callable[[str], AsyncOperationsSource]) -> None:
        self._opener = opener
        self._sources: dict[str, AsyncOperationsSource] = {}
        self._closed = False

    def get(self, url: str) -> AsyncOperationsSource:
        normalized = str(split_source_url(url))
        if self._closed:
            raise Unavailable("the source registry is closed (shutting down)")
        source = self._sources.get(normalized)
        if source is None:
            source = self._opener(normalized)
            self._sources[normalized] = source
        return source

    async def aclose(self) -> None:
        self._closed = True
        sources, self._sources = list(self._sources.values()), {}
        for source in sources:
            await source.aclose()


class SourceRegistry:
    """One open source per normalized URL, shared by threads; ``close()`` closes them all.

    ``get`` after ``close`` raises :class:`~lrobridge.errors.Unavailable` (transient: a watch
    polled during shutdown is retried later, not failed).
    """

    def __init__(self, opener: Callable[[str], OperationsSource] = open_source) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._sources: dict[str, OperationsSource] = {}
        self._closed = False

    def get(self, url: str) -> OperationsSource:
        normalized = str(split_source_url(url))
        with self._lock:
            if self._closed:
                raise Unavailable("the source registry is closed (shutting down)")
            source = self._sources.get(normalized)
            if source is None:
                source = self._opener(normalized)
                self._sources[normalized] = source
            return source

    def __len__(self) -> int:
        with self._lock:
            return len(self._sources)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sources, self._sources = list(self._sources.values()), {}
        for source in sources:
            source.close()
