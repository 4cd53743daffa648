"""The SSRF guard's pure parts: address classification, URL rules, pinning (no network)."""

from __future__ import annotations

import ipaddress
import urllib.parse

import pytest

from lrobridge.errors import InvalidArgument, Unavailable
from lrobridge.webhooks.ssrf import Guard, IPAddress, classify, parse_url

ALLOW_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class DictResolver:
    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        if host not in self.names:
            raise Unavailable(f"cannot resolve {host!r}")
        return [ipaddress.ip_address(a) for a in self.names[host]]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),  # 240.0.0.0/4
        ("192.0.2.10", "documentation"),  # TEST-NET-1: never a real target
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),  # mapped addresses are refused whatever they embed
        ("64:ff9b::a00:1", "NAT64"),
        ("2002:a00:1::1", "6to4"),
        ("2001:0:a00:1::1", "Teredo"),
        ("ff02::1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused_with_the_reason(address: str, reason: str) -> None:
    found = classify(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None


def test_allowed_networks_lift_the_refusal_only_inside_them() -> None:
    allow = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert classify(ipaddress.ip_address("10.9.9.9"), allow) is None
    assert classify(ipaddress.ip_address("fd00::5"), allow) is None
    assert classify(ipaddress.ip_address("192.168.0.1"), allow) is not None
    # an IPv4 allow-list does not let the IPv4-mapped form of its addresses through
    assert classify(ipaddress.ip_address("::ffff:10.9.9.9"), allow) is not None


def test_a_url_is_taken_apart_with_a_default_port_and_path() -> None:
    target = parse_url("https://Hooks.Example.com/a/b?x=1")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert target.request_target == "/a/b?x=1" and target.host_header == "hooks.example.com"
    v6 = parse_url("http://[2001:db8::1]:8080")
    assert v6.host == "2001:db8::1" and v6.request_target == "/"
    assert v6.host_header == "[2001:db8::1]:8080"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("ftp://example.com/", "must start with https://"),
        ("example.com/hook", "must start with https://"),
        ("https://user:pw@example.com/", "user info"),
        ("https://example.com@10.0.0.1/", "user info"),
        ("https://example.com/#frag", "fragment"),
        ("https:///path", "no host"),
        ("https://example.com:0/", "port"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/\x00", "control"),
        ("https://[fe80::1%25eth0]/", "zone"),
        ("https://" + "a" * 3000 + ".com/", "longer than"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_url(url)


def test_http_is_refused_when_no_network_is_allowed() -> None:
    guard = Guard(DictResolver({"hooks.example.com": ["8.8.8.8"]}))
    with pytest.raises(InvalidArgument, match="must use https://"):
        guard.pin("http://hooks.example.com/")
    assert str(guard.pin("https://hooks.example.com/").address) == "8.8.8.8"


def test_http_is_allowed_only_for_addresses_in_the_allowed_networks() -> None:
    resolver = DictResolver({"inside.test": ["127.0.0.1"], "outside.test": ["8.8.8.8"]})
    guard = Guard(resolver, ALLOW_LOOPBACK)
    assert str(guard.pin("http://inside.test:8080/").address) == "127.0.0.1"
    with pytest.raises(InvalidArgument, match="http:// is only allowed"):
        guard.pin("http://outside.test/")
    assert str(guard.pin("https://outside.test/").address) == "8.8.8.8"


def test_a_name_resolving_to_any_private_address_is_refused_as_a_whole() -> None:
    guard = Guard(DictResolver({"mixed.test": ["8.8.8.8", "10.0.0.1"]}))
    with pytest.raises(InvalidArgument, match=r"resolves to 10\.0\.0\.1, which is a private"):
        guard.pin("https://mixed.test/")


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://100.64.0.1/",
        "https://[fd00::1]/",
        "https://10.0.0.1:8443/",
    ],
)
def test_ip_literals_are_classified_without_a_lookup(url: str) -> None:
    guard = Guard(DictResolver({}))  # any lookup would raise Unavailable
    with pytest.raises(InvalidArgument, match="only public addresses"):
        guard.pin(url)


def test_the_pinned_address_is_the_first_checked_one() -> None:
    guard = Guard(DictResolver({"two.test": ["8.8.4.4", "8.8.8.8"]}))
    pinned = guard.pin("https://two.test/x")
    assert str(pinned.address) == "8.8.4.4"
    assert [str(a) for a in pinned.addresses] == ["8.8.4.4", "8.8.8.8"]


def test_a_name_that_does_not_resolve_raises_the_resolvers_transient_error() -> None:
    with pytest.raises(Unavailable):
        Guard(DictResolver({})).pin("https://nowhere.test/")


# -- the project's own table of non-global ranges (IANA special-purpose registries) ----------
# The same answer on every supported Python: 3.11 and 3.12's ipaddress call 192.0.0.192 global.


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("192.0.0.192", False),  # IETF protocol assignments (192.0.0.0/24): not global
        ("192.0.0.8", False),  # IPv4 dummy address
        ("192.0.0.9", True),  # PCP anycast: globally reachable per IANA, inside 192.0.0.0/24
        ("192.0.0.10", True),  # TURN anycast: globally reachable per IANA
        ("192.0.0.170", False),  # NAT64/DNS64 discovery
        ("100.64.0.0", False),  # shared address space 100.64.0.0/10, first and last
        ("100.127.255.255", False),
        ("100.128.0.1", True),  # just outside it
        ("198.18.0.1", False),  # benchmarking
        ("198.51.100.7", False),  # TEST-NET-2
        ("203.0.113.7", False),  # TEST-NET-3
        ("192.88.99.1", False),  # deprecated 6to4 relay anycast: N/A
        ("255.255.255.255", False),  # limited broadcast
        ("240.0.0.1", False),  # reserved 240/4
        ("239.255.255.250", False),  # multicast
        ("0.1.2.3", False),  # "this network"
        ("192.31.196.1", True),  # AS112-v4: globally reachable
        ("192.175.48.1", True),  # direct delegation AS112: globally reachable
        ("2001:db8::1", False),  # documentation
        ("3fff::1", False),  # documentation (RFC 9637)
        ("64:ff9b:1::1", False),  # local-use IPv4/IPv6 translation 64:ff9b:1::/48
        ("64:ff9b:1:ffff::1", False),
        ("100::1", False),  # discard-only
        ("2001:2::1", False),  # benchmarking
        ("2001:10::1", False),  # deprecated ORCHID: N/A
        ("2001:1::1", True),  # PCP anycast: globally reachable exception inside 2001::/23
        ("2001:20::1", True),  # ORCHIDv2: globally reachable
        ("2001:4:112::1", True),  # AS112-v6
        ("2001:100::1", False),  # still inside 2001::/23 (IETF protocol assignments)
        ("5f00::1", False),  # SRv6 SIDs
        ("fec0::1", False),  # deprecated site-local: outside the global unicast 2000::/3
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("::ffff:192.168.1.1", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:100.64.0.1", False),
        ("2607:f8b0:4004:800::200e", True),  # a public IPv6 address
        ("8.8.4.4", True),
    ],
)
def test_addresses_are_judged_by_the_projects_own_iana_table(address: str, allowed: bool) -> None:
    reason = classify(ipaddress.ip_address(address))
    assert (reason is None) is allowed, reason


def test_the_table_holds_every_non_global_iana_entry_and_no_globally_reachable_one() -> None:
    from lrobridge.core.addresses import GLOBALLY_REACHABLE, NOT_GLOBALLY_REACHABLE

    non_global = {str(entry.network) for entry in NOT_GLOBALLY_REACHABLE}
    assert {"192.0.0.0/24", "100.64.0.0/10", "64:ff9b:1::/48", "2001:db8::/32"} <= non_global
    assert {"224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32", "ff00::/8"} <= non_global
    exceptions = {str(entry.network) for entry in GLOBALLY_REACHABLE}
    assert {"192.0.0.9/32", "192.0.0.10/32", "2001:1::1/128", "2001:3::/32"} <= exceptions
    for entry in (*NOT_GLOBALLY_REACHABLE, *GLOBALLY_REACHABLE):
        assert entry.name and entry.reference.startswith("RFC")


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://hooks.example.com/", True),
        ("https://hooks.example.com:443/", True),
        ("https://hooks.example.com:8443/", True),
        ("https://hooks.example.com:1024/", True),
        ("https://hooks.example.com:65535/", True),
        ("https://hooks.example.com:25/", False),  # SMTP
        ("https://hooks.example.com:22/", False),
        ("https://hooks.example.com:80/", False),  # https on the plain-HTTP port
        ("https://hooks.example.com:1023/", False),
    ],
)
def test_webhook_urls_use_443_or_an_unprivileged_port(url: str, accepted: bool) -> None:
    if accepted:
        assert parse_url(url).port == (urllib.parse.urlsplit(url).port or 443)
    else:
        with pytest.raises(InvalidArgument, match="port"):
            parse_url(url)


def test_plain_http_in_an_allowed_network_may_use_80_or_an_unprivileged_port() -> None:
    assert parse_url("http://10.0.0.5/").port == 80
    assert parse_url("http://10.0.0.5:8080/").port == 8080
    with pytest.raises(InvalidArgument, match="port"):
        parse_url("http://10.0.0.5:443/")
