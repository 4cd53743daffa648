"""Which events a webhook receives (lrobridge.webhooks.filters)."""

from __future__ import annotations

import pytest

from lrobridge.errors import InvalidArgument
from lrobridge.webhooks.filters import WebhookFilter

NAME = "projects/p/locations/l/operations/op-1"
TYPE = "type.googleapis.com/google.cloud.Meta"


def test_an_empty_filter_matches_every_completion_but_not_progress() -> None:
    f = WebhookFilter.build()
    for outcome in ("succeeded", "failed", "cancelled", "expired", "not_found"):
        assert f.matches(name=NAME, outcome=outcome, metadata_type="")
    assert not f.matches(name=NAME, outcome="progress", metadata_type="")


def test_progress_is_delivered_only_when_named() -> None:
    f = WebhookFilter.build(outcomes=["progress"])
    assert f.matches(name=NAME, outcome="progress", metadata_type="")
    assert not f.matches(name=NAME, outcome="succeeded", metadata_type="")


@pytest.mark.parametrize(
    ("glob", "matches"),
    [
        ("projects/*/locations/*/operations/*", True),
        ("projects/**/operations/*", True),
        ("projects/*/operations/*", False),
        ("projects/p/locations/l/operations/op-?", True),
        ("projects/q/**", False),
    ],
)
def test_operation_globs_use_resource_name_segments(glob: str, matches: bool) -> None:
    f = WebhookFilter.build(operation=glob)
    assert f.matches(name=NAME, outcome="failed", metadata_type="") is matches


def test_outcome_and_metadata_type_must_all_match() -> None:
    f = WebhookFilter.build(outcomes=["failed", "cancelled"], metadata_type=TYPE)
    assert f.matches(name=NAME, outcome="failed", metadata_type=TYPE)
    assert not f.matches(name=NAME, outcome="succeeded", metadata_type=TYPE)
    assert not f.matches(name=NAME, outcome="failed", metadata_type=TYPE + "2")
    assert not f.matches(name=NAME, outcome="failed", metadata_type="")


def test_a_single_outcome_string_and_case_are_accepted() -> None:
    assert WebhookFilter.build(outcomes="FAILED").outcomes == frozenset({"failed"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcomes": ["done"]}, "unknown outcome 'done'"),
        ({"operation": "x" * 2000}, "longer than"),
        ({"metadata_type": "a b"}, "contains whitespace"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        WebhookFilter.build(**kwargs)  # type: ignore[arg-type]
