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
) -> sweep.SweepRequest:
    request = plan.request(watched)
    plan.listed(
        request,
        listed=names,
        watched=watched,
        found_done=found_done,
        pages=pages,
        polls_per_second=rate,
        started=started,
    )
    return request


def test_the_first_sweep_is_unfiltered_and_the_next_ones_ask_for_done_operations() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    first = listed(plan, {A, B}, {A, B})
    assert first.filter == "" and first.name == PARENT
    assert plan.status is SweepStatus.WORKING and plan.covers(A) and plan.covers(B)
    assert plan.request({A, B}).filter == sweep.DONE_FILTER


def test_a_refused_filter_is_dropped_for_good() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A})
    request = plan.request({A})
    plan.failed(request, InvalidArgument("filter not supported"), now=5.0)
    assert plan.status is SweepStatus.WORKING and plan.next_sweep == 5.0
    assert all(plan.request({A}).filter == "" for _ in range(3))


@pytest.mark.parametrize("error", [Unimplemented("no List"), PermissionDenied("no list perm")])
def test_unimplemented_or_permission_denied_ends_sweeping_the_collection(error: Exception) -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=True)
    plan.failed(plan.request(), error, now=0.0)  # type: ignore[arg-type]
    assert plan.status is SweepStatus.FAILED and not plan.due(1e9) and not plan.covers(A)


def test_a_transient_error_uncovers_the_watches_until_the_next_listing() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A})
    plan.failed(plan.request({A}), Unavailable("down"), now=10.0)
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
    while plan.request({A, B}).filter:  # filtered sweeps cannot show a vanished name
        listed(plan, set(), {A, B})
        assert plan.covers(A)
    listed(plan, {B}, {A, B})  # the next full listing misses A
    assert not plan.covers(A) and plan.covers(B)


def test_a_new_watched_name_makes_the_next_sweep_a_full_listing() -> None:
    plan = SweepPlan.for_parent(PARENT, grpc=False)
    listed(plan, {A}, {A})
    assert plan.request({A}).filter == sweep.DONE_FILTER
    assert plan.request({A, B}).filter == ""
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
    request = plan.request({A})
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
    assert plan.due(100.0 + 1.4)  # the sweep ended 1.4 s after it started: due at once
