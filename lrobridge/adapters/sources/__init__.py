"""Operations sources (adapters): open one from its URL, and keep one open per URL.

``open_source(url)`` picks the adapter from the URL (see :mod:`lrobridge.core.source_url`):

* ``grpc://host:port``  -> :class:`~lrobridge.adapters.sources.grpc_source.GrpcSource`, plaintext;
* ``grpcs://host:port`` -> ``GrpcSource`` over TLS with Application Default Credentials;
* ``http://host[:port]/vN`` -> :class:`~lrobridge.adapters.sources.rest_source.RestSource`;
* ``https://host/vN``   -> ``RestSource`` with ADC (``AuthorizedSession``).

Credentials and connections are created on first call, never when a source is opened, so code
(and unit tests) can open sources without ADC or network. :class:`SourceRegistry` caches one
open source per normalized URL for the watcher and the API, and closes them all at shutdown.

This package is an adapter: it may import gRPC, requests and google-auth (pyproject.toml's
banned-api rule lists it as such); the core sees only :class:`lrobridge.ports.OperationsSource`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lrobridge.adapters.sources.grpc_source import (
    GrpcSource,
    insecure_channel_factory,
    secure_channel_factory,
)
from lrobridge.adapters.sources.rest_source import (
    DEFAULT_POOL_SIZE,
    RestSource,
    authorized_session_factory,
    plain_session_factory,
)
from lrobridge.core.source_url import (
    DEFAULT_CREDENTIAL_HOSTS,
    check_credential_host,
    split_source_url,
)
from lrobridge.errors import Unavailable
from lrobridge.ports import OperationsSource

__all__ = ["GrpcSource", "RestSource", "SourceRegistry", "open_source"]


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
    parts = split_source_url(url)
    check_credential_host(parts, credential_hosts)  # again here: watches outlive settings
    normalized = str(parts)
    if parts.scheme == "grpc":
        return GrpcSource(normalized, insecure_channel_factory(parts.target))
    if parts.scheme == "grpcs":
        return GrpcSource(normalized, secure_channel_factory(parts.target, credentials))
    if parts.scheme == "http":
        return RestSource(normalized, plain_session_factory(pool_size))
    return RestSource(normalized, authorized_session_factory(credentials, pool_size))


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
