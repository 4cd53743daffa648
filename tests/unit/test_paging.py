"""Page tokens (lrobridge.core.paging): opaque, signed, bound to their listing, expiring (AIP-158);
and the bridge signs them with the configured key so every instance honours the others'."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.core import paging
from lrobridge.errors import ConfigError, InvalidArgument
from lrobridge.storage.sqlite.store import SqliteStore

KEY = b"0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_token_continues_the_listing_it_was_issued_for() -> None:
    tokens = paging.PageTokens(KEY)
    token = tokens.encode("watches", after="abc-1")
    fields = tokens.decode(token, "watches")
    assert paging.cursor(fields) == "abc-1"
    assert tokens.decode("", "watches") is None  # the first page
    assert "abc-1" not in token and "watches" not in token  # nothing readable at a glance


def test_a_token_built_by_a_client_is_refused_though_its_content_is_well_formed() -> None:
    """The format before signing: base64 JSON that anybody could write."""
    unsigned = base64.urlsafe_b64encode(b'{"after":"zzz","k":"watches"}').decode().rstrip("=")
    with pytest.raises(InvalidArgument, match="not issued by this API or was altered"):
        paging.PageTokens(KEY).decode(unsigned, "watches")


def test_a_tampered_token_is_refused() -> None:
    tokens = paging.PageTokens(KEY)
    body, _, mac = tokens.encode("watches", after="abc-1").partition(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields["after"] = "zzz"  # skip ahead, keeping the signature
    altered = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    flipped_mac = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (f"{altered}.{mac}", f"{body}.{flipped_mac}", body, f"{body}.", f".{mac}"):
        with pytest.raises(InvalidArgument, match="not issued by this API or was altered"):
            tokens.decode(bad, "watches")


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = paging.PageTokens(b"x" * 32).encode("watches", after="abc-1")
    with pytest.raises(InvalidArgument, match="not issued by this API"):
        paging.PageTokens(KEY).decode(token, "watches")


def test_a_token_of_another_listing_is_refused() -> None:
    tokens = paging.PageTokens(KEY)
    token = tokens.encode("webhooks", after="abc-1")
    with pytest.raises(InvalidArgument, match="listing of 'webhooks', not of 'deliveries'"):
        tokens.decode(token, "deliveries")


def test_a_token_expires_after_its_lifetime() -> None:
    clock = Clock()
    tokens = paging.PageTokens(KEY, lifetime=3600, clock=clock)
    token = tokens.encode("watches", after="abc-1")
    clock.now += 3600
    assert paging.cursor(tokens.decode(token, "watches")) == "abc-1"
    clock.now += 1
    with pytest.raises(InvalidArgument, match="expired"):
        tokens.decode(token, "watches")


def test_a_token_from_far_in_the_future_is_refused() -> None:
    clock = Clock()
    token = paging.PageTokens(KEY, clock=Clock(clock.now + 86400)).encode("watches", after="a")
    with pytest.raises(InvalidArgument, match="expired"):
        paging.PageTokens(KEY, clock=clock).decode(token, "watches")


def test_the_same_secret_gives_the_same_key_and_short_keys_are_refused() -> None:
    assert paging.derive_key("s" * 16) == paging.derive_key("s" * 16) != paging.derive_key("t" * 16)
    with pytest.raises(ValueError, match="16 bytes"):
        paging.PageTokens(b"short")
    with pytest.raises(ConfigError, match="LROBRIDGE_PAGE_TOKEN_KEY has 5 characters"):
        Settings.from_env({"LROBRIDGE_PAGE_TOKEN_KEY": "short"})
    with pytest.raises(ConfigError, match="LROBRIDGE_PAGE_TOKEN_LIFETIME"):
        Settings.from_env({"LROBRIDGE_PAGE_TOKEN_LIFETIME": "1s"})
    settings = Settings.from_env({"LROBRIDGE_PAGE_TOKEN_KEY": "s" * 16})
    assert "s" * 16 not in repr(settings)


API_KEY = "k-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _bridge(page_token_key: str, store: SqliteStore) -> Bridge:
    settings = dataclasses.replace(
        Settings(), push_auth="none", api_keys=frozenset({API_KEY}), project="p"
    )
    if page_token_key:
        settings = dataclasses.replace(settings, page_token_key=page_token_key)
    return Bridge(settings, store=store)


@pytest.fixture
def shared_store() -> Iterator[SqliteStore]:
    store = SqliteStore(":memory:")
    yield store
    store.close()


def _first_page(client: FlaskClient, path: str) -> str:
    page = client.get(f"{path}?pageSize=1", headers=AUTH).get_json()
    return str(page["nextPageToken"])


def test_instances_with_the_same_key_honour_each_others_tokens_and_others_do_not(
    shared_store: SqliteStore,
) -> None:
    one, two, other = (_bridge(k, shared_store) for k in ("a" * 20, "a" * 20, "b" * 20))
    try:
        client = one.create_app().test_client()
        for i in range(2):
            created = client.post(
                "/v1/watches",
                json={"operation": f"operations/op{i}", "source": "grpc://127.0.0.1:1"},
                headers=AUTH,
            )
            assert created.status_code == 201, created.data
        token = _first_page(client, "/v1/watches")
        rest = two.create_app().test_client().get(f"/v1/watches?pageToken={token}", headers=AUTH)
        assert rest.status_code == 200 and len(rest.get_json()["watches"]) == 1
        refused = (
            other.create_app().test_client().get(f"/v1/watches?pageToken={token}", headers=AUTH)
        )
        assert refused.status_code == 400
        error = refused.get_json()["error"]
        assert error["status"] == "INVALID_ARGUMENT" and "pageToken" in error["message"]
        # A watches token does not continue another kind of listing of the same bridge.
        foreign = client.get(f"/v1/operations?pageToken={token}", headers=AUTH)
        assert foreign.status_code == 400
        assert "not of 'operations'" in foreign.get_json()["error"]["message"]
    finally:
        for bridge in (one, two, other):
            bridge.close()


def test_the_api_refuses_a_page_token_a_client_wrote_itself(shared_store: SqliteStore) -> None:
    bridge = _bridge("", shared_store)
    try:
        client = bridge.create_app().test_client()
        created = client.post(
            "/v1/watches",
            json={"operation": "operations/op0", "source": "grpc://127.0.0.1:1"},
            headers=AUTH,
        )
        assert created.status_code == 201
        # A well-formed cursor (the stores' cursors are sequence numbers): only the MAC is missing.
        raw = json.dumps({"k": "watches", "after": "0"}).encode()
        crafted = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        response = client.get(f"/v1/watches?pageToken={crafted}", headers=AUTH)
        assert response.status_code == 400
        assert response.get_json()["error"]["status"] == "INVALID_ARGUMENT"
        # The bridge's own token (random per-process key, LROBRIDGE_PAGE_TOKEN_KEY unset) works.
        client.post(
            "/v1/watches",
            json={"operation": "operations/op1", "source": "grpc://127.0.0.1:1"},
            headers=AUTH,
        )
        token = _first_page(client, "/v1/watches")
        assert client.get(f"/v1/watches?pageToken={token}", headers=AUTH).status_code == 200
    finally:
        bridge.close()
