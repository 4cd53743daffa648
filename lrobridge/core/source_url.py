"""Source URLs: what a watch points at, validated and normalized (ARCHITECTURE.md, "Sources").

Accepted forms::

    grpc://host:port             plaintext gRPC (google.longrunning.Operations)
    grpcs://host:port            gRPC over TLS with Application Default Credentials
    http://host[:port]/vN        REST base including the API version; an operation is read at
    https://host[:port]/vN       GET {base}/{name}; HTTPS uses Application Default Credentials

A REST base may have leading path segments before the version (``https://host/api/v1``), as
long as its last segment is an API version such as ``v1``, ``v1beta1`` or ``v2alpha``.

Normalization makes one source one string, so a watch registered twice with spellings of the
same URL is one watch: scheme and host lowercased, the default port of http/https dropped, a
trailing slash removed. Everything else (userinfo, query, fragment, a path on a gRPC URL, ...)
is refused with :class:`~lrobridge.errors.InvalidArgument` naming the problem.

Pure module: no gRPC or HTTP client imports (the API layer validates URLs with it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from lrobridge.core.names import check_text, is_digits
from lrobridge.errors import InvalidArgument

Scheme = Literal["grpc", "grpcs", "http", "https"]
SCHEMES: tuple[Scheme, ...] = ("grpc", "grpcs", "http", "https")
# Pub/Sub attribute values (the `source` attribute) are limited to 1 KiB.
MAX_SOURCE_URL_BYTES = 1024

_FORMS = "grpc://host:port, grpcs://host:port, http://host[:port]/v1 or https://host/v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9\-_]{0,61}[a-z0-9])?")
_PATH_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~\-]+")
_VERSION_RE = re.compile(r"v\d+(?:(?:p\d+)?(?:alpha|beta)\d*)?")


@dataclasses.dataclass(frozen=True)
class SourceURL:
    """The parts of a valid source URL; ``str(source_url)`` is its normalized form."""

    scheme: Scheme
    host: str  # lowercased; an IPv6 literal without brackets
    port: int | None  # None only for http/https on their default port
    path: str  # "" for gRPC; "/v1" (no trailing slash) for REST

    @property
    def is_grpc(self) -> bool:
        return self.scheme in ("grpc", "grpcs")

    @property
    def secure(self) -> bool:
        return self.scheme in ("grpcs", "https")

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def target(self) -> str:
        """host:port with the default port filled in (a gRPC channel target)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = self.port if self.port is not None else _DEFAULT_PORTS[self.scheme]
        return f"{host}:{port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def parse_source_url(url: str, *, credential_hosts: tuple[str, ...] | None = None) -> str:
    """The normalized form of a source URL, or InvalidArgument naming what is wrong with it.

    With ``credential_hosts``, a secure source (``grpcs``, ``https``) must also be on a host it
    allows (see :func:`check_credential_host`)."""
    parts = split_source_url(url)
    if credential_hosts is not None:
        check_credential_host(parts, credential_hosts)
    return str(parts)


DEFAULT_CREDENTIAL_HOSTS = ("*.googleapis.com",)


def host_matches(host: str, pattern: str) -> bool:
    """``*.example.com`` matches any name below example.com; ``*`` any host; else exact."""
    pattern = pattern.strip().lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def check_credential_host(parts: SourceURL, allowed: tuple[str, ...]) -> None:
    """Secure sources are called with the bridge's own Google credentials: refuse any whose host
    is not in ``allowed`` (``LROBRIDGE_CREDENTIAL_HOSTS``), so nobody who may register a watch can
    have the bridge's access token sent to a server of theirs."""
    if not parts.secure or any(host_matches(parts.host, p) for p in allowed):
        return
    raise InvalidArgument(
        f"source {parts}: the bridge sends its Google credentials to {parts.scheme} sources, and "
        f"{parts.host!r} is not in LROBRIDGE_CREDENTIAL_HOSTS ({', '.join(allowed) or 'empty'}); "
        "add the host there if it should receive them"
    )


def split_source_url(url: str) -> SourceURL:
    """Like :func:`parse_source_url`, returning the parts."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"source URL is empty; use {_FORMS}")
    check_text(url, "source URL")
    if len(url.encode()) > MAX_SOURCE_URL_BYTES:
        raise InvalidArgument(
            f"source URL is {len(url.encode())} bytes long; at most {MAX_SOURCE_URL_BYTES}"
        )
    bad = next((ch for ch in url if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F), None)
    if bad is not None:
        raise InvalidArgument(f"source URL {url!r} contains whitespace or a control character")
    if "://" not in url:
        raise InvalidArgument(f"source URL {url!r} has no scheme; use {_FORMS}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise InvalidArgument(f"source URL {url!r} has unknown scheme {scheme!r}; use {_FORMS}")
    if "?" in url:
        raise InvalidArgument(f"source URL {url!r} must not have a query ('?...')")
    if "#" in url:
        raise InvalidArgument(f"source URL {url!r} must not have a fragment ('#...')")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidArgument(f"source URL {url!r} is not a URL: {exc}") from None
    if "@" in parts.netloc:
        raise InvalidArgument(
            f"source URL {url!r} must not carry user information ('user@' or 'user:password@'); "
            "secure sources authenticate with Application Default Credentials"
        )
    host = _host(url, parts.netloc)
    port = _port(url, parts.netloc)
    typed_scheme: Scheme = scheme  # narrowed by the SCHEMES check above
    if typed_scheme in ("grpc", "grpcs"):
        if port is None:
            raise InvalidArgument(
                f"source URL {url!r} has no port; gRPC sources need one ({scheme}://host:port)"
            )
        if parts.path not in ("", "/"):
            raise InvalidArgument(
                f"source URL {url!r} has a path ({parts.path!r}); gRPC sources are "
                f"{scheme}://host:port only"
            )
        return SourceURL(typed_scheme, host, port, "")
    path = _rest_path(url, parts.path)
    if port == _DEFAULT_PORTS[typed_scheme]:
        port = None
    return SourceURL(typed_scheme, host, port, path)


def _host(url: str, netloc: str) -> str:
    if netloc.startswith("["):
        literal = netloc[1 : netloc.find("]")]  # urlsplit refused an unterminated '['
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise InvalidArgument(
                f"source URL {url!r}: {literal!r} is not an IPv6 address"
            ) from None
    host = netloc.rsplit(":", 1)[0] if ":" in netloc else netloc
    if not host:
        raise InvalidArgument(f"source URL {url!r} has no host")
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidArgument(f"source URL {url!r}: {host!r} is not a valid host name")
    return host


def _port(url: str, netloc: str) -> int | None:
    after_host = netloc[netloc.find("]") + 1 :] if netloc.startswith("[") else netloc
    if netloc.startswith("[") and after_host and not after_host.startswith(":"):
        raise InvalidArgument(f"source URL {url!r} has text after the IPv6 address")
    if ":" not in after_host:
        return None
    text = after_host.rsplit(":", 1)[1]
    if not is_digits(text) or not 1 <= int(text) <= 65535:
        raise InvalidArgument(f"source URL {url!r}: port {text!r} is not a number in 1-65535")
    return int(text)


def _rest_path(url: str, path: str) -> str:
    stripped = path.rstrip("/")
    if not stripped:
        raise InvalidArgument(
            f"source URL {url!r} has no API version path; REST sources include it, "
            "e.g. http://host:port/v1"
        )
    segments = stripped[1:].split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _PATH_SEGMENT_RE.fullmatch(segment):
            raise InvalidArgument(
                f"source URL {url!r}: path segment {segment!r} is not allowed "
                "(letters, digits, '.', '_', '~', '-'; no empty, '.' or '..' segments)"
            )
    if not _VERSION_RE.fullmatch(segments[-1]):
        raise InvalidArgument(
            f"source URL {url!r}: the path must end with the API version (e.g. /v1, /v1beta1), "
            f"got {segments[-1]!r}"
        )
    return "/" + "/".join(segments)
