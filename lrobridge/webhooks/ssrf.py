"""The SSRF guard: which URLs a webhook may have and which addresses a request may go to.

Rules (checked when a webhook is registered and again before every attempt):

* the URL is ``https://`` with a host name or IP literal, no user info, no fragment, at most
  :data:`MAX_URL_LENGTH` characters; ``http://`` only when ``LROBRIDGE_WEBHOOK_ALLOW_NETWORKS``
  lists networks, and then every address the host resolves to must be inside them;
* the port is 443 for ``https://`` (80 for ``http://``) or an unprivileged port, 1024-65535:
  the ports below 1024 belong to other services (SMTP, SSH, ...) that a webhook must not be
  able to talk to;
* every address the host resolves to must be globally reachable, judged by the project's own
  copy of IANA's special-purpose registries (:mod:`lrobridge.core.addresses`, the same on every
  Python): loopback, private (RFC 1918), link-local (169.254.0.0/16 holds cloud metadata
  servers at 169.254.169.254; fe80::/10), shared address space (100.64.0.0/10), unique-local
  (fc00::/7), documentation, benchmarking, IETF protocol assignments (192.0.0.0/24 except the
  globally reachable anycast addresses), multicast, broadcast, reserved 240.0.0.0/4 and the
  rest are refused; so are IPv4-mapped (::ffff:0:0/96) and the other IPv4-embedding IPv6 forms
  (NAT64 64:ff9b::/96 too, though IANA calls it global: the translator would connect to the
  embedded IPv4 address), unless the address lies in one of the networks
  ``LROBRIDGE_WEBHOOK_ALLOW_NETWORKS`` lists;
* a name that resolves to any refused address is refused as a whole.

:meth:`Guard.pin` returns the checked address; the HTTP sender connects to exactly that address
(sending the name in ``Host`` and TLS SNI, verifying the certificate against the name), so a
DNS answer that changes between the check and the connection (DNS rebinding) cannot redirect
the request. Redirects are never followed.

Pure module: classification and URL parsing; name resolution goes through the
:class:`Resolver` seam (the system resolver lives in :mod:`lrobridge.adapters.webhook_sender`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from collections.abc import Sequence
from typing import Protocol

from lrobridge.core.addresses import non_global_reason
from lrobridge.errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
# The port policy: the scheme's own port, or an unprivileged one.
DEFAULT_PORTS = {"https": 443, "http": 80}
LOWEST_UNPRIVILEGED_PORT = 1024
_IPV4_EMBEDDING = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "an IPv4-mapped IPv6 address"),
    (ipaddress.IPv6Network("64:ff9b::/96"), "a NAT64 address (embeds an IPv4 address)"),
    (ipaddress.IPv6Network("64:ff9b:1::/48"), "a NAT64 address (embeds an IPv4 address)"),
    (ipaddress.IPv6Network("2002::/16"), "a 6to4 address (embeds an IPv4 address)"),
    (ipaddress.IPv6Network("2001::/32"), "a Teredo address (embeds an IPv4 address)"),
    (ipaddress.IPv6Network("::/96"), "an IPv4-compatible IPv6 address"),
)


_LOOPBACK_AND_UNSPECIFIED = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))


class Resolver(Protocol):
    """Resolves a host name for the SSRF guard (adapter: lrobridge.adapters.webhook_sender)."""

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to; raises a BridgeError when it resolves to none."""
        ...


@dataclasses.dataclass(frozen=True)
class Target:
    """A webhook URL taken apart."""

    url: str
    scheme: str  # "https" or "http"
    host: str  # name or IP literal, lower case, IPv6 without brackets
    port: int
    request_target: str  # path and query, at least "/"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def literal(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


@dataclasses.dataclass(frozen=True)
class PinnedTarget:
    """A target whose addresses all passed the guard, and the one to connect to."""

    target: Target
    address: IPAddress
    addresses: tuple[IPAddress, ...]


def parse_url(url: str) -> Target:
    """Syntax and scheme checks of a webhook URL (no DNS); InvalidArgument says what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("webhook url is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"webhook url is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidArgument("webhook url contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"webhook url {url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise InvalidArgument(f"webhook url {url!r} must start with https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidArgument("webhook url must not contain user info (user:password@)")
    if parts.fragment or url.endswith("#"):
        raise InvalidArgument("webhook url must not contain a fragment (#...)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidArgument(f"webhook url {url!r} has no host")
    if "%" in host:
        raise InvalidArgument("webhook url must not use an IPv6 zone id")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidArgument(f"webhook url host {host!r} is not a valid name") from None
    if port is not None and port != DEFAULT_PORTS[scheme] and port < LOWEST_UNPRIVILEGED_PORT:
        raise InvalidArgument(
            f"webhook url port {port} is refused: a webhook uses port {DEFAULT_PORTS[scheme]} "
            f"for {scheme}:// or a port from {LOWEST_UNPRIVILEGED_PORT} to 65535 (the ports "
            "below belong to other services, such as SMTP and SSH)"
        )
    request_target = parts.path or "/"
    if parts.query:
        request_target += "?" + parts.query
    return Target(
        url=url,
        scheme=scheme,
        host=host.lower(),
        port=port if port is not None else DEFAULT_PORTS[scheme],
        request_target=request_target,
    )


def classify(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``address`` must not be a webhook target, or None when it may be."""
    if any(address.version == net.version and address in net for net in allow):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address not in _LOOPBACK_AND_UNSPECIFIED:
        for network, reason in _IPV4_EMBEDDING:
            if address in network:
                return reason
    return non_global_reason(address)


class Guard:
    """Applies the rules of the module docstring with one resolver and allow-list."""

    def __init__(self, resolver: Resolver, allow: Sequence[IPNetwork] = ()) -> None:
        self._resolver = resolver
        self.allow = tuple(allow)

    def parse(self, url: str) -> Target:
        target = parse_url(url)
        if target.scheme == "http" and not self.allow:
            raise InvalidArgument(
                f"webhook url {url!r} must use https:// (http:// is only for the networks "
                "listed in LROBRIDGE_WEBHOOK_ALLOW_NETWORKS, and none is)"
            )
        return target

    def pin(self, url: str) -> PinnedTarget:
        """The checked target and the address to connect to.

        Raises InvalidArgument when the URL or an address is refused, and the resolver's
        error (a TransientError when resolution failed) when the name resolves to nothing.
        """
        target = self.parse(url)
        literal = target.literal
        addresses = [literal] if literal is not None else self._resolve(target)
        for address in addresses:
            reason = classify(address, self.allow)
            if reason is not None:
                shown = "" if literal is not None else f" resolves to {address}, which"
                raise InvalidArgument(
                    f"webhook host {target.host!r}{shown} is {reason}; only public addresses "
                    "(or LROBRIDGE_WEBHOOK_ALLOW_NETWORKS) may receive webhooks"
                )
            if target.scheme == "http" and not any(
                address.version == net.version and address in net for net in self.allow
            ):
                raise InvalidArgument(
                    f"webhook url {url!r}: http:// is only allowed for addresses in "
                    f"LROBRIDGE_WEBHOOK_ALLOW_NETWORKS, and {address} is not; use https://"
                )
        return PinnedTarget(target=target, address=addresses[0], addresses=tuple(addresses))

    def _resolve(self, target: Target) -> list[IPAddress]:
        addresses = self._resolver.resolve(target.host, target.port)
        if not addresses:
            raise InvalidArgument(f"webhook host {target.host!r} resolves to no address")
        return list(addresses)
