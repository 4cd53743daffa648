"""ListOperations pages as the sources hand them to a sweep: every name at once, each snapshot
built (and, from JSON, checked) only when asked for, so one malformed item spoils only itself."""

from __future__ import annotations

import json

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.adapters.sources.grpc_source import list_page
from lrobridge.adapters.sources.rest_source import HttpReply, page_from
from lrobridge.core import codec
from lrobridge.core.sweep import watched_on_page
from lrobridge.errors import BridgeError, FailedPrecondition


def reply(body: object) -> HttpReply:
    return HttpReply(
        method="GET",
        url="http://127.0.0.1:1/v1/projects/p/operations",
        status_code=200,
        headers={"content-type": "application/json"},
        content=json.dumps(body).encode(),
    )


def test_a_page_builds_the_snapshot_of_an_item_only_when_it_is_read() -> None:
    operations = [operations_pb2.Operation(name=f"operations/{i}", done=i == 1) for i in range(3)]
    built: list[str] = []

    def build(op: operations_pb2.Operation) -> codec.Snapshot:
        built.append(op.name)
        return codec.snapshot_from_proto(op)

    page = codec.ListingPage([op.name for op in operations], operations, build)
    assert page.names == ["operations/0", "operations/1", "operations/2"]
    assert len(page) == 3
    assert page[1].done
    assert built == ["operations/1"]


def test_a_grpc_page_names_every_operation_and_reads_each_as_sent() -> None:
    response = operations_pb2.ListOperationsResponse(next_page_token="next")
    for i in range(3):
        response.operations.add(name=f"projects/p/operations/op-{i}", done=i == 1)
    page, token = list_page(response)
    assert token == "next"
    assert page.names == [f"projects/p/operations/op-{i}" for i in range(3)]
    assert [s.operation for s in page] == list(response.operations)


def test_a_malformed_rest_item_fails_only_when_its_snapshot_is_read() -> None:
    page, token = page_from(
        reply(
            {
                "operations": [
                    {"name": "projects/p/operations/good", "done": True},
                    {"name": "projects/p/operations/bad", "done": "yes"},
                ],
                "nextPageToken": "t2",
            }
        )
    )
    assert token == "t2"
    assert page.names == ["projects/p/operations/good", "projects/p/operations/bad"]
    assert page[0].done
    with pytest.raises(FailedPrecondition, match="'done' must be a boolean"):
        page[1]


@pytest.mark.parametrize(
    "item", [{"done": True}, {"name": ""}, {"name": 7}, "projects/p/operations/x", None]
)
def test_a_rest_item_without_a_name_fails_the_whole_page(item: object) -> None:
    with pytest.raises(BridgeError, match="not an Operation with a 'name'"):
        page_from(reply({"operations": [{"name": "projects/p/operations/ok"}, item]}))


def test_a_sweep_reads_only_the_watched_names_of_a_page() -> None:
    names = [f"projects/p/operations/op-{i}" for i in range(5)]
    watched = {names[1]: "w1", names[4]: "w4", "projects/p/operations/elsewhere": "w9"}
    assert list(watched_on_page(names, watched)) == [(1, "w1"), (4, "w4")]


def test_a_list_of_snapshots_from_a_custom_source_is_a_page_as_it_is() -> None:
    snapshots = [
        codec.snapshot_from_proto(operations_pb2.Operation(name=f"operations/{i}", done=True))
        for i in range(2)
    ]
    page = codec.ListingPage.of(snapshots)
    assert page.names == ["operations/0", "operations/1"]
    assert list(page) == snapshots
    assert codec.ListingPage.of(page) is page
