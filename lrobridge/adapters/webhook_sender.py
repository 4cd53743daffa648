"""The HTTP adapter of webhook delivery: urllib3 connections pinned to the checked address.

:class:`PinnedSender` implements :class:`lrobridge.webhooks.worker.Sender`. It opens the TCP
connection to ``request.pinned.address`` (the address the SSRF guard checked) and never
resolves the name again; the name travels in the ``Host`` header and, for https, in TLS SNI,
and the server certificate is verified against the name (certifi's CA bundle unless
``ca_certs`` says otherwise). Redirects are not followed and nothing is retried here (the
schedule does that). The timeout covers connecting and receiving the response headers; then at
most :data:`RESPONSE_BODY_LIMIT` bytes of the body are read for the delivery log and the
connection is dropped if more remain. Connections are pooled per (address, port, name).

:class:`SystemResolver` implements :class:`lrobridge.webhooks.ssrf.Resolver` with
``getaddrinfo``.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import certifi
import urllib3
import urllib3.exceptions

from lrobridge.errors import Unavailable
from lrobridge.webhooks.ssrf import IPAddress
from lrobridge.webhooks.worker import SendRequest, SendResult

RESPONSE_BODY_LIMIT = 2048


class SystemResolver:
    """The system's DNS resolver, as the SSRF guard asks it: every address a host resolves to."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise Unavailable(f"cannot resolve {host!r}: {exc}") from None
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        return addresses


class PinnedSender:
    """Sends webhook requests over urllib3 connections pinned to the address the SSRF guard checked
    (TLS still verified against the host name)."""

    def __init__(self, *, concurrency: int = 16, ca_certs: str | None = None) -> None:
        self._pools = urllib3.PoolManager(
            num_pools=max(64, concurrency * 4),
            maxsize=concurrency,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs or certifi.where(),
        )

    def close(self) -> None:
        self._pools.clear()

    def send(self, request: SendRequest) -> SendResult:
        target = request.pinned.target
        pool_kwargs: dict[str, str] = {}
        if target.scheme == "https":
            pool_kwargs = {"server_hostname": target.host, "assert_hostname": target.host}
        started = time.monotonic()
        try:
            pool = self._pools.connection_from_host(
                str(request.pinned.address), target.port, target.scheme, pool_kwargs=pool_kwargs
            )
            response = pool.urlopen(
                "POST",
                target.request_target,
                body=request.body,
                headers={**request.headers, "host": target.host_header},
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(total=request.timeout),
                preload_content=False,
                release_conn=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            return SendResult(0, time.monotonic() - started, error=_describe(exc, request.timeout))
        except OSError as exc:
            return SendResult(0, time.monotonic() - started, error=f"connection failed: {exc}")
        latency = time.monotonic() - started
        body = b""
        complete = False
        try:
            body = response.read(RESPONSE_BODY_LIMIT)
            complete = len(body) < RESPONSE_BODY_LIMIT or not response.read(1)
        except (urllib3.exceptions.HTTPError, OSError):
            complete = False
        finally:
            if not complete:
                response.close()
            response.release_conn()
        return SendResult(
            status_code=response.status,
            latency=latency,
            body=body.decode("utf-8", "replace"),
            retry_after=response.headers.get("retry-after"),
        )


def _describe(exc: urllib3.exceptions.HTTPError, timeout: float) -> str:
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # before its base class
        reason = str(exc).rsplit(": ", 1)[-1]
        return f"connection failed: {reason}"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return f"connect timed out after {timeout:g}s"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return f"no response within {timeout:g}s"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS failed: {exc}"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return f"connection broken: {exc}"
    return f"{type(exc).__name__}: {exc}"
