"""The SSRF guard's pure parts: address classification, URL rules, pinning (no network)."""

from __future__ import annotations

import ipaddress

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
        ("240.0.0.1", "private"),  # 240.0.0.0/4: reserved, which ipaddress counts private
        ("192.0.2.10", "private"),  # TEST-NET-1: documentation, never a real target
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
