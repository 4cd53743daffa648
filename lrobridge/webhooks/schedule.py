"""When a delivery is attempted again, and when an endpoint is given up on.

The retry schedule is of the Standard Webhooks / Svix kind, stretched to about three days:

=========  ======================  =================
attempt    delay after the one     time since the
           before it               event (no jitter)
=========  ======================  =================
1          immediately             0
2          5 seconds               5 s
3          1 minute                1 min 5 s
4          5 minutes               6 min
5          30 minutes              36 min
6          2 hours                 2 h 36 min
7          5 hours                 7 h 36 min
8          10 hours                17 h 36 min
9          14 hours                31 h 36 min
10         20 hours                51 h 36 min
11         24 hours                75 h 36 min (3.15 days)
=========  ======================  =================

Each delay is drawn uniformly from ±:data:`JITTER` of its value, so endpoints that failed
together do not all retry in the same second. A failed answer carrying ``Retry-After`` (seconds
or an HTTP date) replaces the scheduled delay, clamped to
[:data:`MIN_RETRY_AFTER`, :data:`MAX_RETRY_AFTER`]. After the last attempt fails the delivery
is dead-lettered (state ``DEAD``): listable and replayable.

Only 2xx is success. ``410 Gone`` disables the endpoint at once (the receiver says it is gone
for good); an endpoint whose attempts have all failed for :data:`DISABLE_AFTER` (5 days, as
Svix does) since its last success is disabled too, with the reason saying so. Disabling an
endpoint dead-letters its pending deliveries.

Pure module: :func:`plan_after_attempt` turns one attempt's result into a :class:`Plan`.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import random

from lrobridge.core.names import is_digits

RETRY_SCHEDULE: tuple[float, ...] = (
    0.0,
    5.0,
    60.0,
    5 * 60.0,
    30 * 60.0,
    2 * 3600.0,
    5 * 3600.0,
    10 * 3600.0,
    14 * 3600.0,
    20 * 3600.0,
    24 * 3600.0,
)
MAX_ATTEMPTS = len(RETRY_SCHEDULE)
JITTER = 0.2
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 24 * 3600.0
DISABLE_AFTER = 5 * 86400.0


def is_success(status_code: int) -> bool:
    return 200 <= status_code < 300


def scheduled_delay(round_attempts: int, rng: random.Random | None = None) -> float | None:
    """Delay before the next attempt when ``round_attempts`` attempts have failed (None: none
    is left). Jittered by ±JITTER unless it is zero."""
    if round_attempts >= MAX_ATTEMPTS:
        return None
    base = RETRY_SCHEDULE[round_attempts]
    if base == 0:
        return 0.0
    return base * (rng or random).uniform(1.0 - JITTER, 1.0 + JITTER)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP date), clamped to
    [MIN_RETRY_AFTER, MAX_RETRY_AFTER]; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if is_digits(text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do after an attempt: the delivery's next state and the endpoint's health."""

    state: str  # "SUCCEEDED", "PENDING" or "DEAD"
    next_attempt_time: float | None
    failing_since: float | None  # the endpoint's new failing_since (None after a success)
    disable_reason: str = ""  # non-empty: disable the endpoint with this reason
    error: str = ""  # why the delivery is dead, when it is


def plan_after_attempt(
    *,
    status_code: int,
    retry_after: float | None,
    round_attempts: int,
    failing_since: float | None,
    now: float,
    rng: random.Random | None = None,
) -> Plan:
    """The plan after attempt number ``round_attempts`` (counting this one) of the current
    round answered ``status_code`` (0: no answer)."""
    if is_success(status_code):
        return Plan(state="SUCCEEDED", next_attempt_time=None, failing_since=None)
    since = failing_since if failing_since is not None else now
    if status_code == 410:
        reason = "the endpoint answered 410 Gone"
        return Plan("DEAD", None, since, disable_reason=reason, error=f"webhook disabled: {reason}")
    if now - since >= DISABLE_AFTER:
        days = DISABLE_AFTER / 86400
        reason = f"every attempt failed for {days:g} days (since {_iso(since)})"
        return Plan("DEAD", None, since, disable_reason=reason, error=f"webhook disabled: {reason}")
    delay = scheduled_delay(round_attempts, rng)
    if delay is None:
        return Plan("DEAD", None, since, error=f"all {MAX_ATTEMPTS} attempts failed")
    if retry_after is not None:
        delay = retry_after
    return Plan("PENDING", now + delay, since)


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")
