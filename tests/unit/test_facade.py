"""The Operations facade's own rules: page tokens bound to parent and filter, parents with or
without their collection, wait capping, and the store queries behind List (on every store
backend: SQLite without network, Firestore on the emulator as integration)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec, paging
from lrobridge.delivery import relay
from lrobridge.errors import InvalidArgument, NotFound
from lrobridge.operations.service import (
    DEADLINE_MARGIN_SECONDS,
    OperationsFacade,
    decode_page_token,
    encode_page_token,
    normalize_parent,
)
from lrobridge.operations.waiters import CompletionHub
from lrobridge.ports import OperationsSource
from lrobridge.storage import Store
from tests.support.stores import Backend


@pytest.fixture
def store(store_backend: Backend) -> Store:
    return store_backend.open()


def _no_sources(url: str) -> OperationsSource:
    raise AssertionError(f"no source should be called, got {url}")


@pytest.fixture
def facade(store: Store) -> Iterator[OperationsFacade]:
    hub = CompletionHub(store, recheck_interval=0.05)
    yield OperationsFacade(store, sources=_no_sources, hub=hub, max_wait=5.0)
    hub.close()


def _produce(store: Store, name: str) -> None:
    store.create_produced_operation(
        codec.snapshot_from_proto(operations_pb2.Operation(name=name)), source="s", now=1.0
    )


def _finish(store: Store, name: str, **fields: object) -> None:
    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True, **fields))
    outcome = snapshot.outcome()
    assert outcome is not None
    store.complete_produced_operation(
        relay.completion(snapshot, outcome, source="s", payload_format="binary", now=2.0), now=2.0
    )


def test_a_page_token_only_continues_the_listing_it_was_issued_for() -> None:
    tokens = paging.PageTokens(b"k" * 32)
    token = encode_page_token(
        tokens, parent="projects/a", filter="done = true", after="projects/a/operations/x"
    )
    assert decode_page_token(tokens, token, parent="projects/a", filter="done = true") == (
        "projects/a/operations/x"
    )
    with pytest.raises(InvalidArgument, match="issued for parent 'projects/a'"):
        decode_page_token(tokens, token, parent="projects/b", filter="done = true")
    with pytest.raises(InvalidArgument, match="another filter"):
        decode_page_token(tokens, token, parent="projects/a", filter="")
    for forged in ("garbage", "eyJ4IjoxfQ", "!!!!", "a.b"):
        with pytest.raises(InvalidArgument, match="not issued by this API"):
            decode_page_token(tokens, forged, parent="projects/a", filter="")


@pytest.mark.parametrize(
    ("given", "parent"),
    [
        ("", ""),
        ("operations", ""),
        ("projects/p", "projects/p"),
        ("projects/p/operations", "projects/p"),
    ],
)
def test_a_parent_names_the_same_collection_with_or_without_its_operations_suffix(
    given: str, parent: str
) -> None:
    assert normalize_parent(given) == parent


def test_list_pages_in_name_order_with_the_filter_applied_in_the_store(
    store: Store, facade: OperationsFacade
) -> None:
    for i in range(5):
        _produce(store, f"projects/p/operations/op-{i}")
    _produce(store, "projects/p/locations/l/operations/nested")  # another parent
    _finish(store, "projects/p/operations/op-1")
    _finish(store, "projects/p/operations/op-3", error={"code": 9, "message": "x"})
    first, token = facade.list("projects/p", page_size=2)
    second, token2 = facade.list("projects/p", page_size=2, page_token=token)
    third, token3 = facade.list("projects/p", page_size=2, page_token=token2)
    assert [s.name[-4:] for s in first + second + third] == [f"op-{i}" for i in range(5)]
    assert token3 == ""
    done, _ = facade.list("projects/p/operations", filter="done = true")
    assert [s.name for s in done] == ["projects/p/operations/op-1", "projects/p/operations/op-3"]
    errors, _ = facade.list("projects/p", filter="error.code = 9")
    assert [s.name for s in errors] == ["projects/p/operations/op-3"]
    big, _ = facade.list("projects/p", page_size=10_000)
    assert len(big) == 5
    with pytest.raises(InvalidArgument, match="negative"):
        facade.list("projects/p", page_size=-1)


def test_waits_are_capped_by_the_server_maximum_and_the_callers_deadline(
    facade: OperationsFacade,
) -> None:
    assert facade.wait_seconds(None, None) == 5.0
    assert facade.wait_seconds(2.0, None) == 2.0
    assert facade.wait_seconds(100.0, 3.0) == 3.0 - DEADLINE_MARGIN_SECONDS
    assert facade.wait_seconds(1.0, 0.1) == 0.0
    with pytest.raises(InvalidArgument):
        facade.wait_seconds(-1.0, None)


def test_a_blocking_wait_returns_when_another_thread_completes_the_operation(
    store: Store, facade: OperationsFacade
) -> None:
    _produce(store, "operations/w")
    threading.Timer(0.2, lambda: _finish(store, "operations/w")).start()
    # No notify: the hub's batched recheck of the store notices the completion.
    assert facade.wait("operations/w", timeout=5.0).done


def test_get_and_wait_of_untracked_names_are_not_found(facade: OperationsFacade) -> None:
    with pytest.raises(NotFound):
        facade.get("operations/missing")
    with pytest.raises(NotFound):
        facade.wait("operations/missing", timeout=0.1)
    with pytest.raises(InvalidArgument):
        facade.get("operations/../x")
