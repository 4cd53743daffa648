"""Source URL validation and normalization (lrobridge.core.source_url), and that opening a source or
caching it in a SourceRegistry needs neither network nor credentials."""

from __future__ import annotations

import threading

import pytest

from lrobridge.adapters.sources import GrpcSource, RestSource, SourceRegistry, open_source
from lrobridge.core.source_url import parse_source_url, split_source_url
from lrobridge.errors import InvalidArgument, Unavailable


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("grpc://localhost:50051", "grpc://localhost:50051"),
        ("grpc://127.0.0.1:8080/", "grpc://127.0.0.1:8080"),
        ("GRPC://LocalHost:50051", "grpc://localhost:50051"),
        ("grpcs://longrunning.googleapis.com:443", "grpcs://longrunning.googleapis.com:443"),
        ("grpc://[::1]:50051", "grpc://[::1]:50051"),
        ("grpc://[0:0:0:0:0:0:0:1]:50051", "grpc://[::1]:50051"),
        ("grpc://ops-server.example.com.:9000", "grpc://ops-server.example.com:9000"),
        ("grpc://ops_server:9000", "grpc://ops_server:9000"),
        ("http://localhost:8080/v1", "http://localhost:8080/v1"),
        ("http://localhost:8080/v1/", "http://localhost:8080/v1"),
        ("http://example.com:80/v1", "http://example.com/v1"),
        ("https://example.com:443/v1", "https://example.com/v1"),
        ("https://example.com:8443/v1", "https://example.com:8443/v1"),
        ("HTTPS://Example.COM/v1beta1", "https://example.com/v1beta1"),
        ("https://example.com/v2alpha", "https://example.com/v2alpha"),
        ("https://example.com/v1p1beta1", "https://example.com/v1p1beta1"),
        ("https://example.com/api/ops/v1", "https://example.com/api/ops/v1"),
        ("http://[2001:db8::1]:8080/v1", "http://[2001:db8::1]:8080/v1"),
    ],
)
def test_accepted_source_urls_are_normalized(url: str, normalized: str) -> None:
    assert parse_source_url(url) == normalized
    assert parse_source_url(normalized) == normalized  # normalization is idempotent


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost:50051", "no scheme"),
        ("ftp://example.com/v1", "unknown scheme 'ftp'"),
        ("unix:///tmp/socket", "unknown scheme 'unix'"),
        ("grpc://localhost", "no port"),
        ("grpcs://example.com", "no port"),
        ("grpc://localhost:", "port ''"),
        ("grpc://localhost:0", "port '0'"),
        ("grpc://localhost:65536", "port '65536'"),
        ("grpc://localhost:http", "port 'http'"),
        ("grpc://localhost:\u00b2", "port '\u00b2'"),
        ("grpc://:50051", "no host"),
        ("grpc://localhost:50051/v1", "has a path"),
        ("http://localhost:8080", "no API version path"),
        ("http://localhost:8080/", "no API version path"),
        ("https://example.com/api", "must end with the API version"),
        ("https://example.com/v1/operations", "must end with the API version"),
        ("https://example.com//v1", "path segment ''"),
        ("https://example.com/../v1", "path segment '..'"),
        ("https://example.com/a%20b/v1", "path segment 'a%20b'"),
        ("https://example.com/v1?key=secret", "query"),
        ("https://example.com/v1?", "query"),
        ("https://example.com/v1#top", "fragment"),
        ("https://user:pass@example.com/v1", "user information"),
        ("grpc://token@localhost:50051", "user information"),
        ("http://exa mple.com/v1", "whitespace"),
        ("http://example.com/v1\n", "whitespace"),
        ("http://bad_host!/v1", "not a valid host name"),
        ("http://-leading.example.com/v1", "not a valid host name"),
        ("grpc://[::1:50051", "Invalid IPv6 URL"),
        ("grpc://[not-ipv6]:50051", "IPv4 or IPv6 address"),
        ("grpc://[::1]x:50051", "after the IPv6 address"),
        ("https://example.com/" + "a" * 1100 + "/v1", "bytes long"),
    ],
)
def test_refused_source_urls_raise_invalid_argument_naming_the_problem(
    url: str, problem: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_source_url(url)
    assert problem in info.value.message


def test_split_source_url_exposes_scheme_host_port_path_and_grpc_target() -> None:
    parts = split_source_url("https://Example.com/v1")
    assert (parts.scheme, parts.host, parts.port, parts.path) == (
        "https",
        "example.com",
        None,
        "/v1",
    )
    assert parts.secure and not parts.is_grpc
    assert parts.target == "example.com:443"
    ipv6 = split_source_url("grpc://[::1]:7000")
    assert ipv6.is_grpc and not ipv6.secure
    assert ipv6.target == "[::1]:7000"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("grpc://localhost:1", GrpcSource),
        ("grpcs://longrunning.googleapis.com:443", GrpcSource),
        ("http://localhost:1/v1", RestSource),
        ("https://example.googleapis.com/v1", RestSource),
    ],
)
def test_open_source_picks_adapter_by_scheme_without_credentials_or_network(
    url: str, kind: type
) -> None:
    source = open_source(url)
    try:
        assert isinstance(source, kind)
        assert source.url == parse_source_url(url)
    finally:
        source.close()


@pytest.mark.parametrize(
    ("url", "allowed", "refused"),
    [
        ("https://attacker.example/v1", ("*.googleapis.com",), True),
        ("grpcs://googleapis.com.attacker.example:443", ("*.googleapis.com",), True),
        ("https://googleapis.com/v1", ("*.googleapis.com",), True),
        ("https://ops.internal.example/v1", ("ops.internal.example",), False),
        ("https://a.b.corp.example/v1", ("*.corp.example",), False),
        ("https://anything.example/v1", ("*",), False),
        ("http://attacker.example/v1", ("*.googleapis.com",), False),  # no credentials sent
    ],
)
def test_credentials_only_go_to_secure_sources_on_allowed_hosts(
    url: str, allowed: tuple[str, ...], refused: bool
) -> None:
    if refused:
        with pytest.raises(InvalidArgument, match="LROBRIDGE_CREDENTIAL_HOSTS"):
            parse_source_url(url, credential_hosts=allowed)
        with pytest.raises(InvalidArgument, match="LROBRIDGE_CREDENTIAL_HOSTS"):
            open_source(url, credential_hosts=allowed)
    else:
        assert parse_source_url(url, credential_hosts=allowed)
        open_source(url, credential_hosts=allowed).close()


def test_open_source_refuses_an_invalid_url() -> None:
    with pytest.raises(InvalidArgument, match="unknown scheme"):
        open_source("ws://localhost:1/v1")


class _RecordingSource:
    def __init__(self, url: str) -> None:
        self.url = url
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_registry_returns_one_source_per_normalized_url_across_threads() -> None:
    opened: list[_RecordingSource] = []
    lock = threading.Lock()

    def opener(url: str) -> _RecordingSource:
        source = _RecordingSource(url)
        with lock:
            opened.append(source)
        return source

    registry = SourceRegistry(opener)  # type: ignore[arg-type]
    seen: list[object] = []
    spellings = ["grpc://LOCALHOST:50051", "grpc://localhost:50051/", "grpc://localhost:50051"]
    threads = [
        threading.Thread(target=lambda u=u: seen.append(registry.get(u))) for u in spellings * 10
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1
    assert opened[0].url == "grpc://localhost:50051"
    assert all(source is opened[0] for source in seen)
    assert registry.get("http://localhost:8080/v1/") is not opened[0]
    assert len(registry) == 2


def test_registry_close_closes_every_source_and_later_gets_are_transient_errors() -> None:
    registry = SourceRegistry(_RecordingSource)  # type: ignore[arg-type]
    first = registry.get("grpc://localhost:1")
    second = registry.get("http://localhost:1/v1")
    registry.close()
    assert first.closed and second.closed  # type: ignore[attr-defined]
    with pytest.raises(Unavailable, match="closed"):
        registry.get("grpc://localhost:1")


def test_registry_refuses_an_invalid_url_before_opening_anything() -> None:
    registry = SourceRegistry(_RecordingSource)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="no port"):
        registry.get("grpc://localhost")
    assert len(registry) == 0
