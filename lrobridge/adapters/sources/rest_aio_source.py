"""The asyncio REST Operations source: google.longrunning.Operations over its HTTP mapping with
``httpx.AsyncClient``, for the watcher's event loop.

Implements :class:`lrobridge.ports.AsyncOperationsSource`. Paths, escaping, the JSON kept as sent,
redirect refusal and the error mapping are those of :mod:`lrobridge.adapters.sources.rest_source`
(its shared functions over :class:`~lrobridge.adapters.sources.rest_source.HttpReply`); only the
client differs. One client per source, created on first use on the calling loop, pooled for
``max_concurrency`` connections; at most that many calls run at once (an ``asyncio.Semaphore``).
Redirects are never followed; only connection establishment is retried (httpx transport
``retries``), the watcher's backoff reschedules the rest.

``https://`` sources send Application Default Credentials
(:func:`lrobridge.adapters.sources.adc.credentials_for`). google-auth has no httpx transport: a
token is refreshed with its ``requests`` transport in a worker thread (the only blocking edge,
once an hour), one refresh at a time, and applied to each request's headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import google.auth.exceptions
import httpx

from lrobridge.adapters.sources.adc import credentials_for
from lrobridge.adapters.sources.rest_source import (
    USER_AGENT,
    HttpReply,
    auth_error,
    check_timeout,
    checked,
    list_path,
    operation_from,
    operation_path,
    page_from,
    wait_unimplemented,
)
from lrobridge.core.codec import ListingPage, Snapshot
from lrobridge.core.names import validate_operation_name
from lrobridge.errors import DeadlineExceeded, Unavailable

DEFAULT_MAX_CONCURRENCY = 64


class AsyncRestSource:
    """An Operations server reached over REST from an asyncio loop (see the module docstring).

    ``credentials``: None for ``http://`` sources; for ``https://`` a google-auth credentials
    object, or ``"adc"`` to look up Application Default Credentials on first use.
    """

    def __init__(
        self,
        url: str,
        *,
        credentials: object | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self.url = url.rstrip("/")
        self._credentials_given = credentials
        self._credentials: Any = None
        self._refresh_lock = asyncio.Lock()
        self._max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    async def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        validate_operation_name(name)
        return operation_from(await self._request("GET", operation_path(name), timeout=timeout))

    async def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        raise wait_unimplemented(self.url, name)

    async def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[ListingPage[Any], str]:
        path, params = list_path(parent, filter, page_size, page_token)
        return page_from(await self._request("GET", path, timeout=timeout, params=params))

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def __repr__(self) -> str:
        return f"AsyncRestSource({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _get_client(self) -> httpx.AsyncClient:
        if self._closed:
            raise Unavailable(f"source {self.url} is closed")
        if self._client is None:
            limits = httpx.Limits(
                max_connections=self._max_concurrency,
                max_keepalive_connections=self._max_concurrency,
            )
            self._client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(retries=2, limits=limits),
                headers={
                    "User-Agent": f"{USER_AGENT} python-httpx/{httpx.__version__}",
                    "Accept": "application/json",
                },
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def _auth_headers(self, method: str, url: str) -> dict[str, str]:
        if self._credentials_given is None:
            return {}
        if self._credentials is None:
            given = None if self._credentials_given == "adc" else self._credentials_given
            self._credentials = credentials_for("HTTPS sources", given)
        creds = self._credentials
        if not creds.valid:
            async with self._refresh_lock:
                if not creds.valid:
                    from google.auth.transport.requests import Request

                    try:
                        await asyncio.to_thread(creds.refresh, Request())
                    except google.auth.exceptions.GoogleAuthError as exc:
                        raise auth_error(method, url, exc) from None
        headers: dict[str, str] = {}
        creds.apply(headers)
        return headers

    async def _request(
        self, method: str, path: str, *, timeout: float, params: Mapping[str, str] | None = None
    ) -> HttpReply:
        check_timeout(timeout)
        url = f"{self.url}/{path}"
        client = self._get_client()
        headers = await self._auth_headers(method, url)
        async with self._slots:
            try:
                response = await client.request(
                    method, url, params=params, headers=headers, timeout=timeout
                )
            except httpx.TimeoutException as exc:
                raise DeadlineExceeded(
                    f"{method} {url}: timed out after {timeout}s ({type(exc).__name__})"
                ) from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        return checked(
            HttpReply(
                method=method,
                url=str(response.url),
                status_code=response.status_code,
                headers={k.lower(): v for k, v in response.headers.items()},
                content=response.content,
            )
        )
