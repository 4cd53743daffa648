"""The watcher command's collector policy: long-lived objects frozen, a rare full collection."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from lrobridge.watching.gc_pacing import GcPacing


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()
    gc.unfreeze()  # the process's collector as it was


def test_objects_alive_at_a_freeze_leave_the_collectors_sight(clock: Clock) -> None:
    pacing = GcPacing(freeze_every=10.0, full_every=900.0, clock=clock)
    kept = Node()
    pacing.tick()
    assert gc.get_freeze_count() == 0 and pacing.freezes == 0  # not due yet
    clock.now = 10.0
    pacing.tick()
    assert pacing.freezes == 1 and gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen objects are not collected
    pacing.close()
    assert gc.get_freeze_count() == 0


def test_a_cycle_that_became_garbage_while_frozen_is_freed_by_the_full_collection(
    clock: Clock,
) -> None:
    pacing = GcPacing(freeze_every=10.0, full_every=60.0, clock=clock)
    node = Node()
    alive = weakref.ref(node)
    clock.now = 10.0
    pacing.tick()  # frozen while still in use
    del node
    gc.collect()
    assert alive() is not None  # frozen: an ordinary collection does not see it
    clock.now = 60.0
    pacing.tick()
    assert alive() is None and pacing.full_collections == 1
    assert gc.get_freeze_count() > 0  # what survived is frozen again at once
