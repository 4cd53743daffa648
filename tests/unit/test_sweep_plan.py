"""The ListOperations sweep plan (lrobridge/core/sweep.py): what it learns from each listing or
error, which names it covers, and how often it sweeps."""

from __future__ import annotations

import pytest

from lrobridge.core import sweep
from lrobridge.core.sweep import SweepPlan, SweepStatus
from lrobridge.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)

PARENT = "projects/p/locations/l"
A, B, C = (f"{PARENT}/operations/{x}" for x in "abc")


def listed(
    plan: SweepPlan,
    names: set[str],
    watched: set[str],
    *,
    found_done: int = 0,
    pages: int = 1,
    rate: float = 100.0,
    started: float = 0.0,
    operations: int = 0,
    request: sweep.SweepRequest | None = None,
) -> sweep.SweepRequest:
    """A listing that showed ``names``: the next sweep, or ``request`` (an audit, say)."""
    request = request or plan.begin(now=started)
    plan.listed(
        request,
        listed=names,
        watched=watched,
        found_done=found_done,
        pages=pages,
        polls_per_second=rate,
        started=started,
        operations=operations,
    )
    return request


def test_the_first_sweep_is_unfiltered_and_the_next_ones_ask_for_done_operations() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    first = listed(plan, {A, B}, {A, B})
    assert first.filter == "" and first.name == PARENT
    assert plan.status is SweepStatus.WORKING and plan.covers(A) and plan.covers(B)
    assert plan.request().filter == sweep.DONE_FILTER


def test_a_refused_filter_is_dropped_for_good() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A})
    request = plan.begin(now=4.0)
    plan.failed(request, InvalidArgument("filter not supported"), now=5.0)
    assert plan.status is SweepStatus.WORKING and plan.next_sweep == 5.0
    assert all(plan.begin(now=5.0).filter == "" for _ in range(3))
    assert plan.audit({A, B}) is None  # unfiltered sweeps check the names themselves


@pytest.mark.parametrize("error", [Unimplemented("no List"), PermissionDenied("no list perm")])
def test_unimplemented_or_permission_denied_ends_sweeping_the_collection(error: Exception) -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=True)
    plan.failed(plan.request(), error, now=0.0)  # type: ignore[arg-type]
    assert plan.status is SweepStatus.FAILED and plan.due_at() is None and not plan.covers(A)


def test_a_transient_error_uncovers_the_watches_until_the_next_listing() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A})
    plan.failed(plan.begin(now=9.0), Unavailable("down"), now=10.0)
    assert plan.status is SweepStatus.WORKING and not plan.covers(A)  # polled on their own
    assert plan.next_sweep == 10.0 + sweep.RETRY_AFTER_ERROR
    listed(plan, set(), {A})  # a filtered sweep works again: nothing was forgotten
    assert plan.covers(A)


def test_grpc_tries_the_collection_name_when_the_parent_lists_none_of_the_watched_names() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=True)
    listed(plan, {"other/operations/x"}, {A, B})
    assert plan.status is SweepStatus.PROBING and plan.request().name == f"{PARENT}/operations"
    listed(plan, {A, B}, {A, B})
    assert plan.status is SweepStatus.WORKING and plan.covers(A)


def test_a_request_name_refused_on_every_form_ends_sweeping() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=True)
    plan.failed(plan.request(), InvalidArgument("bad name"), now=0.0)
    plan.failed(plan.request(), NotFound("no such collection"), now=0.0)
    assert plan.status is SweepStatus.FAILED


def test_names_a_full_listing_misses_are_uncovered_and_polled_on_their_own() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A, B}, {A, B, C})
    assert plan.covers(A) and plan.covers(B) and not plan.covers(C)


def test_a_name_that_vanishes_from_a_later_full_listing_is_uncovered() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A, B}, {A, B})
    while (audit := plan.audit({A, B})) is None:  # filtered sweeps cannot show a vanished name
        listed(plan, set(), {A, B})
        assert plan.covers(A)
    assert plan.since_audit == 0 and audit.filter == ""
    listed(plan, {B}, {A, B}, request=audit)  # the audit's full listing misses A
    assert not plan.covers(A) and plan.covers(B)


def test_an_audit_is_due_every_few_sweeps_and_never_while_probing() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    assert plan.audit({A}) is None  # the probe is a full listing itself
    listed(plan, {A}, {A})
    audits = []
    for _ in range(3 * sweep.VERIFY_EVERY):
        listed(plan, set(), {A})
        audits.append(plan.audit({A}) is not None)
    assert audits.count(True) == 3 and audits[sweep.VERIFY_EVERY - 2]


def test_an_audit_keeps_the_sweeps_interval_and_counts_in_their_cost() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A, B}, {A, B}, found_done=1, started=100.0)
    interval, next_sweep = plan.interval, plan.next_sweep
    audit = plan.audit({A, B, C})  # C is new: checked at once
    assert audit is not None and audit.audit
    listed(plan, {A, B, C}, {A, B, C}, request=audit, pages=100, operations=100_000, rate=10.0)
    assert (plan.interval, plan.next_sweep) == (interval, next_sweep)
    assert plan.covers(C)
    # The next sweep reads one page, but a VERIFY_EVERY-th of the audit counts in its cost.
    listed(plan, set(), {A, B, C}, found_done=1, rate=10.0, started=200.0)
    audit_share = 100_000 / sweep.OPERATIONS_PER_CALL / sweep.VERIFY_EVERY
    assert plan.interval >= audit_share / 10.0


def test_a_new_watched_name_makes_an_audit_due_beside_the_filtered_sweeps() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A})
    assert plan.audit({A}) is None
    audit = plan.audit({A, B})
    assert audit is not None and audit.filter == ""
    assert plan.request().filter == sweep.DONE_FILTER
    assert not plan.covers(B)


def test_misses_found_by_safety_polls_drop_the_filter() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A, B, C}, {A, B, C})
    for name in (A, B, C):
        plan.missed(name)
    assert plan.filter == "" and not plan.covers(A)


def test_the_interval_shrinks_while_sweeps_find_completions_and_grows_when_they_do_not() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A}, found_done=0)
    grown = plan.interval
    assert grown > sweep.START_INTERVAL
    listed(plan, {A}, {A}, found_done=1)
    assert plan.interval < grown
    for _ in range(50):
        listed(plan, {A}, {A}, found_done=0)
    assert plan.interval == sweep.MAX_INTERVAL


def test_a_long_listing_is_swept_no_more_often_than_its_reading_costs_in_single_polls() -> None:
    # 2 pages of 100,000 operations read for watches polling 100 times a second: reading them
    # costs as much as 2,000 polls, so one sweep every 20 seconds at most.
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    request = plan.begin(now=0.0)
    plan.listed(
        request,
        listed={A},
        watched={A},
        found_done=1,
        pages=2,
        operations=100_000,
        polls_per_second=100.0,
        started=0.0,
    )
    assert plan.next_sweep >= 100_000 / sweep.OPERATIONS_PER_CALL / 100.0


def test_a_sweep_never_runs_more_often_than_the_single_polls_it_replaces_would_cost() -> None:
    # 50 pages for watches that would poll 10 times a second on their own: one sweep every
    # 5 seconds at most, however many completions it finds.
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A}, found_done=5, pages=50, rate=10.0, started=100.0)
    assert plan.next_sweep - 100.0 >= 5.0


def test_the_interval_runs_from_the_start_of_one_sweep_to_the_start_of_the_next() -> None:
    # A sweep that found completions and took longer than its interval: the next one is due
    # when it ends, so a page is read again one sweep later, not one sweep plus one interval.
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A, B}, {A, B}, found_done=1, started=100.0)
    assert plan.interval == sweep.MIN_INTERVAL
    assert plan.next_sweep == 100.0 + sweep.MIN_INTERVAL
    assert plan.due_at() <= 100.0 + 1.4  # the sweep ended 1.4 s after it started: due at once


def test_an_audit_that_ends_after_the_sweeps_stopped_working_changes_nothing() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A, B}, {A, B})
    sweep_request = plan.begin(now=1.0)
    audit = plan.audit({A, B, C})
    assert audit is not None
    plan.failed(sweep_request, PermissionDenied("no list"), now=1.5)
    listed(plan, {A, B, C}, {A, B, C}, request=audit)
    assert plan.status is SweepStatus.FAILED and not plan.covers(C)


@pytest.mark.parametrize(
    "error", [Unavailable("down"), InvalidArgument("no filter"), NotFound("no collection")]
)
def test_an_audit_that_ends_after_the_sweeps_changed_how_they_list_covers_nothing_new(
    error: Exception,
) -> None:
    # Went unhealthy, dropped the filter, or moved to the other request name meanwhile.
    plan = SweepPlan.for_parent(PARENT, grpc=True)
    listed(plan, {A, B}, {A, B})
    sweep_request = plan.begin(now=1.0)
    audit = plan.audit({A, B, C})
    assert audit is not None
    plan.failed(sweep_request, error, now=1.5)  # type: ignore[arg-type]
    healthy = plan.healthy
    listed(plan, {A, B, C}, {A, B, C}, request=audit)
    assert plan.healthy is healthy and not plan.covers(C)  # nothing revived or newly covered


def test_an_audits_cost_is_shared_only_by_the_sweeps_since_the_one_before() -> None:
    # New names at every sweep: an audit each time, its whole cost counted in each interval.
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A})
    for i in range(3):
        listed(plan, set(), {A}, rate=10.0, started=10.0 * i)
        audit = plan.audit({A, f"{PARENT}/operations/new-{i}"})
        assert audit is not None and audit.spread == (2 if i == 0 else 1)  # the probe: 1
        listed(plan, {A}, {A}, request=audit, pages=100, operations=100_000, rate=10.0)
    listed(plan, set(), {A}, rate=10.0, started=100.0)
    assert plan.interval >= 100_000 / sweep.OPERATIONS_PER_CALL / 10.0
