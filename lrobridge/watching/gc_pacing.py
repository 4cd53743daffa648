"""Short garbage-collector pauses for a process that holds a large live heap (a watcher with
100,000 watches): the process-wide policy of ``lrobridge watcher``.

CPython's cyclic collector traverses every tracked object of the generations it collects. A
watcher's heap is mostly long-lived records that refcounting alone frees (no cycles), yet each
full collection walks all of them: about 80 ms per 100,000 held watches on a quiet machine,
more under load, several times a minute, and every poll, long-poll answer and publish waits
while it runs. :class:`GcPacing` moves every object alive at a tick out of the collector's sight
(``gc.freeze()`` every ``freeze_every`` seconds, after collecting the young generations so their
garbage is not frozen), so collections walk only what was created since. Frozen objects are
still freed by refcounting; the cycles among them that become garbage later (an in-flight
call's, an exception's traceback) wait for the full collection every ``full_every`` seconds
(``gc.unfreeze()`` first): one pause where there were hundreds, and memory held up to 15 minutes
longer.

Not applied to an embedded watcher (a Bridge in someone else's process): the collector is the
process's, so only the watcher command sets its policy.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

FREEZE_EVERY = 10.0
FULL_EVERY = 900.0


class GcPacing:
    """Call :meth:`tick` every few seconds from any one thread (module docstring)."""

    def __init__(
        self,
        *,
        freeze_every: float = FREEZE_EVERY,
        full_every: float = FULL_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._freeze_every = freeze_every
        self._full_every = full_every
        self._clock = clock
        now = clock()
        self._next_freeze = now + freeze_every
        self._next_full = now + full_every
        self.freezes = 0
        self.full_collections = 0

    def tick(self) -> None:
        now = self._clock()
        if now >= self._next_full:
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
            self._next_full = now + self._full_every
            self._next_freeze = now  # and freeze what survived, at once
        if now >= self._next_freeze:
            gc.collect(1)
            gc.freeze()
            self.freezes += 1
            self._next_freeze = now + self._freeze_every

    def close(self) -> None:
        """Give the frozen objects back to the collector."""
        gc.unfreeze()
