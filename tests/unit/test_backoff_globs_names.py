"""Backoff spacing, resource-name globs and operation-name validation."""

from __future__ import annotations

import random

import pytest

from lrobridge.core.backoff import Backoff
from lrobridge.core.globs import glob_matches
from lrobridge.core.names import validate_operation_name
from lrobridge.errors import InvalidArgument


def test_default_backoff_starts_at_one_second_grows_by_half_and_caps_at_a_minute() -> None:
    b = Backoff()
    assert [b.base_delay(n) for n in range(3)] == [1.0, 1.5, 2.25]
    assert b.base_delay(100) == 60.0
    assert b.base_delay(10_000) == 60.0


def test_jittered_delays_stay_within_twenty_percent_and_never_exceed_the_cap() -> None:
    b = Backoff()
    rng = random.Random(7)
    for attempt in range(30):
        base = b.base_delay(attempt)
        for _ in range(50):
            d = b.delay(attempt, rng)
            assert base * 0.8 <= d <= min(60.0, base * 1.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_delay": 0}, "initial delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"initial_delay": 10, "max_delay": 5}, "max delay"),
    ],
)
def test_backoff_refuses_settings_that_cannot_work(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("projects/*/operations/*", "projects/p/operations/op1", True),
        ("projects/*/operations/*", "projects/p/locations/l/operations/op1", False),
        ("projects/**/operations/*", "projects/p/locations/l/operations/op1", True),
        ("operations/op?", "operations/op1", True),
        ("operations/op?", "operations/op12", False),
        ("operations/a.b", "operations/aXb", False),
    ],
)
def test_glob_star_is_one_segment_and_double_star_any(
    pattern: str, name: str, expected: bool
) -> None:
    assert glob_matches(pattern, name) is expected


@pytest.mark.parametrize(
    "name",
    ["operations/1", "projects/p-1/locations/us-central1/operations/op_a.b~c", "operations/a:b@c"],
)
def test_usual_operation_names_are_accepted(name: str) -> None:
    assert validate_operation_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("/operations/1", "must not start or end"),
        ("operations//1", "empty segment"),
        ("operations/../x", "'..' segment"),
        ("operations/a b", "contains ' '"),
        ("operations/a?b", "contains '?'"),
        ("operations/" + "x" * 1100, "at most 1024"),
    ],
)
def test_malformed_operation_names_are_refused_naming_the_problem(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_operation_name(name)
