"""The retry schedule and what each attempt's answer does (lrobridge.webhooks.schedule)."""

from __future__ import annotations

import email.utils
import random

import pytest

from lrobridge.webhooks.schedule import (
    DISABLE_AFTER,
    JITTER,
    MAX_ATTEMPTS,
    MAX_RETRY_AFTER,
    MIN_RETRY_AFTER,
    RETRY_SCHEDULE,
    parse_retry_after,
    plan_after_attempt,
    scheduled_delay,
)

NOW = 1_800_000_000.0


def test_schedule_starts_immediately_grows_and_spans_about_three_days() -> None:
    assert RETRY_SCHEDULE[0] == 0
    assert list(RETRY_SCHEDULE) == sorted(RETRY_SCHEDULE)
    assert RETRY_SCHEDULE[1] == 5  # seconds, then minutes, then hours
    total_days = sum(RETRY_SCHEDULE) / 86400
    assert 2.75 <= total_days <= 3.5
    assert MAX_ATTEMPTS == len(RETRY_SCHEDULE) == 11


def test_every_delay_is_jittered_within_twenty_percent_and_spread() -> None:
    rng = random.Random(7)
    for index, base in enumerate(RETRY_SCHEDULE[1:], start=1):
        draws = [scheduled_delay(index, rng) for _ in range(200)]
        assert all(d is not None and base * (1 - JITTER) <= d <= base * (1 + JITTER) for d in draws)
        assert len({round(d or 0, 6) for d in draws}) > 150  # not one fixed value
    assert scheduled_delay(0, rng) == 0.0
    assert scheduled_delay(MAX_ATTEMPTS, rng) is None


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_succeeds_and_clears_the_failing_streak(status: int) -> None:
    plan = plan_after_attempt(
        status_code=status, retry_after=None, round_attempts=3, failing_since=NOW - 60, now=NOW
    )
    assert plan.state == "SUCCEEDED" and plan.failing_since is None and not plan.disable_reason


@pytest.mark.parametrize("status", [0, 100, 301, 302, 307, 308, 400, 404, 429, 500, 503])
def test_everything_else_is_a_failure_retried_on_the_schedule(status: int) -> None:
    plan = plan_after_attempt(
        status_code=status,
        retry_after=None,
        round_attempts=1,
        failing_since=None,
        now=NOW,
        rng=random.Random(1),
    )
    assert plan.state == "PENDING"
    assert plan.next_attempt_time is not None
    assert NOW + 5 * (1 - JITTER) <= plan.next_attempt_time <= NOW + 5 * (1 + JITTER)
    assert plan.failing_since == NOW  # the streak starts now


def test_410_gone_dead_letters_and_disables_the_endpoint_at_once() -> None:
    plan = plan_after_attempt(
        status_code=410, retry_after=None, round_attempts=1, failing_since=None, now=NOW
    )
    assert plan.state == "DEAD" and "410" in plan.disable_reason
    assert plan.next_attempt_time is None


def test_the_last_failed_attempt_dead_letters_the_delivery_without_disabling() -> None:
    plan = plan_after_attempt(
        status_code=500,
        retry_after=None,
        round_attempts=MAX_ATTEMPTS,
        failing_since=NOW - 3600,
        now=NOW,
    )
    assert plan.state == "DEAD" and not plan.disable_reason
    assert f"all {MAX_ATTEMPTS} attempts failed" in plan.error


def test_an_endpoint_failing_for_five_days_is_disabled_and_says_since_when() -> None:
    kept = plan_after_attempt(
        status_code=500,
        retry_after=None,
        round_attempts=2,
        failing_since=NOW - DISABLE_AFTER + 1,
        now=NOW,
    )
    assert kept.state == "PENDING" and not kept.disable_reason
    plan = plan_after_attempt(
        status_code=500,
        retry_after=None,
        round_attempts=2,
        failing_since=NOW - DISABLE_AFTER,
        now=NOW,
    )
    assert plan.state == "DEAD"
    assert "failed for 5 days" in plan.disable_reason and "since 20" in plan.disable_reason


def test_retry_after_replaces_the_scheduled_delay_exactly() -> None:
    plan = plan_after_attempt(
        status_code=503, retry_after=120.0, round_attempts=1, failing_since=None, now=NOW
    )
    assert plan.next_attempt_time == NOW + 120.0


def test_retry_after_does_not_add_attempts_beyond_the_schedule() -> None:
    plan = plan_after_attempt(
        status_code=429, retry_after=10.0, round_attempts=MAX_ATTEMPTS, failing_since=NOW, now=NOW
    )
    assert plan.state == "DEAD"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", MIN_RETRY_AFTER),
        ("999999999", MAX_RETRY_AFTER),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), MIN_RETRY_AFTER),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("\u00b2", None),  # a Latin-1 header byte str.isdigit() takes and float() refuses
    ],
)
def test_retry_after_accepts_seconds_and_http_dates_clamped(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, now=NOW) == seconds
