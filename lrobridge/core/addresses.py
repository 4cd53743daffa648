"""Which IP addresses are globally reachable: the project's own table, the same on every Python.

Python's ``ipaddress`` tables (``is_global``, ``is_private``) change between releases: 3.11 and
3.12 call ``192.0.0.192`` global although IANA says it is not. lrobridge therefore holds its own
copy of the two IANA registries and judges addresses with it alone:

* IANA IPv4 Special-Purpose Address Registry,
  https://www.iana.org/assignments/iana-ipv4-special-registry/ (RFC 6890, as updated);
* IANA IPv6 Special-Purpose Address Registry,
  https://www.iana.org/assignments/iana-ipv6-special-registry/.

:data:`NOT_GLOBALLY_REACHABLE` is every entry of those registries whose "Globally Reachable"
column is False or N/A, plus the obvious non-unicast space the registries leave to others:
IPv4 multicast 224.0.0.0/4 and IPv6 multicast ff00::/8 (the multicast registries). Reserved
240.0.0.0/4 and limited broadcast 255.255.255.255/32 are registry entries. The registry
entries whose "Globally Reachable" is True but that lie inside a non-global block (PCP and TURN
anycast inside 192.0.0.0/24; the anycast, AMT, AS112, ORCHIDv2 and DET blocks inside 2001::/23)
are :data:`GLOBALLY_REACHABLE` and win over the block around them. IPv6 outside the global
unicast space 2000::/3 (IANA IPv6 Address Space registry: the rest is reserved by the IETF,
unique-local, link-local or multicast) is never globally reachable either.

Pure module.
"""

from __future__ import annotations

import dataclasses
import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class SpecialRange:
    """One registry entry: its block, its name in the registry and the RFC that defines it."""

    network: IPNetwork
    name: str
    reference: str


def _entries(*rows: tuple[str, str, str]) -> tuple[SpecialRange, ...]:
    entries = [SpecialRange(ipaddress.ip_network(n), name, ref) for n, name, ref in rows]
    # Most specific first, so an address is named by the smallest block holding it.
    return tuple(sorted(entries, key=lambda e: -e.network.prefixlen))


# "Globally Reachable" False or N/A (IANA registries as of 2025), and multicast.
NOT_GLOBALLY_REACHABLE = _entries(
    # IPv4 Special-Purpose Address Registry
    ("0.0.0.0/8", '"this network"', "RFC 791"),
    ("0.0.0.0/32", '"this host on this network" (the unspecified address)', "RFC 1122"),
    ("10.0.0.0/8", "a private-use address", "RFC 1918"),
    ("100.64.0.0/10", "shared address space, carrier-grade NAT", "RFC 6598"),
    ("127.0.0.0/8", "a loopback address", "RFC 1122"),
    ("169.254.0.0/16", "a link-local address (cloud metadata servers)", "RFC 3927"),
    ("172.16.0.0/12", "a private-use address", "RFC 1918"),
    ("192.0.0.0/24", "an IETF protocol assignment", "RFC 6890"),
    ("192.0.0.0/29", "the IPv4 service continuity prefix", "RFC 7335"),
    ("192.0.0.8/32", "the IPv4 dummy address", "RFC 7600"),
    ("192.0.0.170/32", "a NAT64/DNS64 discovery address", "RFC 8880"),
    ("192.0.0.171/32", "a NAT64/DNS64 discovery address", "RFC 8880"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526"),
    ("192.88.99.2/32", "the 6a44-relay anycast address", "RFC 6751"),
    ("192.168.0.0/16", "a private-use address", "RFC 1918"),
    ("198.18.0.0/15", "benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    ("240.0.0.0/4", "reserved", "RFC 1112"),
    ("255.255.255.255/32", "the limited broadcast address", "RFC 919"),
    ("224.0.0.0/4", "a multicast address", "RFC 5771"),
    # IPv6 Special-Purpose Address Registry
    ("::1/128", "a loopback address", "RFC 4291"),
    ("::/128", "the unspecified address", "RFC 4291"),
    ("::ffff:0:0/96", "an IPv4-mapped IPv6 address", "RFC 4291"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation (NAT64)", "RFC 8215"),
    ("100::/64", "discard-only", "RFC 6666"),
    ("100:0:0:1::/64", "the dummy IPv6 prefix", "RFC 9780"),
    ("2001::/23", "an IETF protocol assignment", "RFC 2928"),
    ("2001::/32", "Teredo (embeds an IPv4 address)", "RFC 4380"),
    ("2001:2::/48", "benchmarking", "RFC 5180"),
    ("2001:10::/28", "deprecated ORCHID", "RFC 4843"),
    ("2001:db8::/32", "documentation", "RFC 3849"),
    ("2002::/16", "6to4 (embeds an IPv4 address)", "RFC 3056"),
    ("3fff::/20", "documentation", "RFC 9637"),
    ("5f00::/16", "segment routing (SRv6) SIDs", "RFC 9602"),
    ("fc00::/7", "a unique-local address", "RFC 4193"),
    ("fe80::/10", "a link-local address", "RFC 4291"),
    ("ff00::/8", "a multicast address", "RFC 4291"),
)

# "Globally Reachable" True, inside a block above: these win over it.
GLOBALLY_REACHABLE = _entries(
    ("192.0.0.9/32", "Port Control Protocol anycast", "RFC 7723"),
    ("192.0.0.10/32", "Traversal Using Relays around NAT anycast", "RFC 8155"),
    ("2001:1::1/128", "Port Control Protocol anycast", "RFC 7723"),
    ("2001:1::2/128", "Traversal Using Relays around NAT anycast", "RFC 8155"),
    ("2001:1::3/128", "DNS-SD service registration protocol anycast", "RFC 9665"),
    ("2001:3::/32", "AMT", "RFC 7450"),
    ("2001:4:112::/48", "AS112-v6", "RFC 7535"),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343"),
    ("2001:30::/28", "drone remote ID protocol entity tags", "RFC 9374"),
)

_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def non_global_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not globally reachable (its registry entry), or None when it is."""
    for entry in GLOBALLY_REACHABLE:
        if address.version == entry.network.version and address in entry.network:
            return None
    for entry in NOT_GLOBALLY_REACHABLE:
        if address.version == entry.network.version and address in entry.network:
            return f"{entry.name} ({entry.network}, {entry.reference})"
    if isinstance(address, ipaddress.IPv6Address) and address not in _IPV6_GLOBAL_UNICAST:
        return "outside the IPv6 global unicast space (2000::/3, reserved by the IETF)"
    return None
