"""The ListOperations filter: what it accepts, what it matches, and the errors naming what is not
supported."""

from __future__ import annotations

import pytest

from lrobridge.core.opfilter import Condition, parse_filter
from lrobridge.errors import InvalidArgument


def _matches(text: str, **fields: object) -> bool:
    values = {
        "name": "projects/p/operations/build-1",
        "done": False,
        "error_code": 0,
        "metadata_type": "",
        "response_type": "",
    }
    values.update(fields)
    return parse_filter(text).matches(**values)  # type: ignore[arg-type]


def test_the_empty_filter_matches_everything() -> None:
    assert parse_filter("").conditions == () and _matches("") and _matches("   ")


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("done = true", {"done": True}, True),
        ("done=false", {"done": True}, False),
        ("done != true", {"done": False}, True),
        ('name = "projects/p/operations/build-*"', {}, True),
        ("name = 'projects/p/operations/build-1'", {}, True),
        ('name != "projects/p/operations/b*"', {}, False),
        ("error.code = 5", {"error_code": 5}, True),
        ("error.code >= 9", {"error_code": 5}, False),
        ("error.code < 1", {"error_code": 0}, True),
        ('metadata.@type = "t/x"', {"metadata_type": "t/x"}, True),
        ('response.@type != "t/y"', {"response_type": "t/y"}, False),
        ("done = true AND error.code != 0", {"done": True, "error_code": 1}, True),
        ("done = true error.code != 0", {"done": True, "error_code": 0}, False),
    ],
)
def test_conditions_joined_by_and_match_as_aip_160_says(
    text: str, fields: dict[str, object], expected: bool
) -> None:
    assert _matches(text, **fields) is expected


def test_a_trailing_star_on_a_name_is_a_prefix() -> None:
    [condition] = parse_filter('name = "a/operations/x*"').conditions
    assert condition == Condition("name", "=", "a/operations/x*") and condition.is_prefix


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("done = true OR done = false", "OR"),
        ("NOT done = true", "NOT"),
        ("-done = true", "'-'"),
        ("(done = true)", "parentheses"),
        ("state = DONE", "'state'"),
        ('name : "x"', "':'"),
        ("done > true", "'>'"),
        ("done = yes", "true or false"),
        ("error.code = five", "integer"),
        ('name = "a*b"', "'*'"),
        ('metadata.@type = "t*"', "'*'"),
        ("done =", "not a condition"),
        ("AND done = true", "AND"),
        ("done = true AND", "AND"),
        ('name = "unterminated', "cannot read"),
    ],
)
def test_unsupported_or_malformed_filters_are_refused_naming_the_problem(
    text: str, named: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_filter(text)
    assert named in info.value.message


def test_a_huge_filter_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="at most"):
        parse_filter("done = true AND " * 500 + "done = true")
