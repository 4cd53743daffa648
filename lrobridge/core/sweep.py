"""ListOperations sweeps: what the watcher has learned of listing one parent collection on one
source, and when to list it next. Pure module; the watcher does the I/O and feeds the results in.

Where several watches share a parent collection (the name up to ``/operations/``) on a source,
one paged ListOperations can replace their single polls. :class:`SweepPlan` holds, per
(source, parent):

* **whether List works, and how**: the request names to try (the parent; on gRPC also
  ``{parent}/operations``) and the filter (``done = true`` first, unfiltered when refused).
  UNIMPLEMENTED or PERMISSION_DENIED ends sweeping that collection for good; INVALID_ARGUMENT
  drops the filter, then tries the next name, then ends it; transient errors retry later.
* **which watched names a listing covers**: an unfiltered listing is checked against the
  watched names; a name it misses (never listed, or vanished since) is *uncovered* and polled
  per operation from then on. The first sweep (the probe) is unfiltered; after it an *audit*,
  an unfiltered listing run beside the filtered sweeps (so a long one does not hold them up), checks
  the names every ``VERIFY_EVERY``-th sweep and at once when new watched names were never
  checked (until then they poll on their own). A listing that covers none of the watched names
  is a wrong request name. A filtered listing cannot show what it misses; a covered watch that
  its own safety-net poll finds done shows it, and after ``MAX_MISSES`` of those the filter is
  dropped (the sweeps then list everything and check the names themselves). A failed audit
  changes nothing: the names it would have checked stay as they were.
* **the interval**, from the start of one sweep to the start of the next (a sweep that takes
  longer is followed at once by the next, so a page is read again one sweep later, not one
  sweep plus one interval): halved (down to ``MIN_INTERVAL``) after a sweep that found
  completions, x1.5 (up to ``MAX_INTERVAL``, 5 s) after one that found none, and never shorter
  than the single polls it replaces would cost: a sweep of N pages listing M operations runs
  at most as often as the covered watches' own polls would make max(N, M / OPERATIONS_PER_CALL)
  calls, plus the last audit's shared by the sweeps begun since the one before
  (``interval >= cost / polls_per_second``),
  so neither its calls nor the CPU of reading long listings exceed what it saves.

Covered watches keep a slow single poll (``SAFETY_NET`` seconds apart) in case the listing
misses something it cannot show (see above), and poll on their own again while sweeps fail
transiently (until the next listing) or for good.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence

from lrobridge.errors import BridgeError, Code, TransientError

DONE_FILTER = "done = true"
MIN_INTERVAL = 1.0
MAX_INTERVAL = 5.0  # the cost floor (below) spaces sweeps of small or slow groups further
START_INTERVAL = 1.0
SAFETY_NET = 300.0  # seconds between the single polls of a covered watch
VERIFY_EVERY = 4  # an audit (a full listing, beside the sweeps) every n-th sweep
MAX_MISSES = 3
MIN_WATCHES = 2  # a collection with fewer watches is polled per operation
RETRY_AFTER_ERROR = 30.0
PAGE_SIZE = 1000
# What one listed operation costs the watcher, in single polls, when every one listed is watched
# (the dearest case: each snapshot is read): one GetOperation costs about as much CPU as 79
# listed operations (`python bench/sweep_cost.py` on a quiet 2-core machine: 414 us per Get,
# 5.2 us per listed operation). A listing of mostly unwatched ones costs less (one in ten
# watched, `--watched-every 10`: 2.2 us, 195 per Get), so the floor errs on the cheap side.
OPERATIONS_PER_CALL = 80


def watched_on_page(names: Sequence[str], watched: Mapping[str, str]) -> Iterator[tuple[int, str]]:
    """(index, watch id) of each listed name of a page that is ``watched`` (name -> watch id):
    the only items whose snapshots a sweep reads."""
    for index, name in enumerate(names):
        watch_id = watched.get(name)
        if watch_id is not None:
            yield index, watch_id


class SweepStatus(enum.Enum):
    """Whether a collection's sweeps work: not known yet, yes, or no (for good)."""

    PROBING = "probing"  # no listing has been checked yet
    WORKING = "working"
    FAILED = "failed"  # List does not work here: per-operation polling, for good


@dataclasses.dataclass(frozen=True)
class SweepRequest:
    """One listing to run: every page of ListOperations(name, filter). An ``audit`` is the full
    listing that checks which watched names are listed, run beside the sweeps (see
    :meth:`SweepPlan.audit`)."""

    name: str
    filter: str
    audit: bool = False
    spread: int = 1  # an audit's cost is shared by the sweeps begun since the one before

    @property
    def verifies(self) -> bool:
        """Whether this listing shows every operation (so misses can be seen)."""
        return not self.filter


@dataclasses.dataclass
class SweepPlan:
    """What is known of listing one (source, parent), and when to list it next."""

    names: tuple[str, ...]  # request names to try, in order
    name_index: int = 0
    filter: str = DONE_FILTER
    status: SweepStatus = SweepStatus.PROBING
    interval: float = START_INTERVAL
    next_sweep: float = 0.0
    since_audit: int = 0  # sweeps since the last audit began
    audit_cost: float = 0.0  # what the last audit cost, in single polls
    misses: int = 0
    verified: set[str] = dataclasses.field(default_factory=set)  # seen in a full listing
    uncovered: set[str] = dataclasses.field(default_factory=set)  # missed by one
    reason: str = ""  # why it failed, for the log
    healthy: bool = True  # False from a transient failure until the next listing

    @classmethod
    def for_parent(cls, parent: str, *, grpc: bool) -> SweepPlan:
        """The plan of a parent collection; gRPC servers may want ``{parent}/operations``."""
        names = (parent, f"{parent}/operations") if grpc and parent else (parent,)
        return cls(names=names)

    # -- what to do ------------------------------------------------------------------------

    def due_at(self) -> float | None:
        """When the next sweep is due; None once List does not work here."""
        return None if self.status is SweepStatus.FAILED else self.next_sweep

    def begin(self, *, now: float) -> SweepRequest:
        """The sweep starting ``now`` (see :meth:`request`); the next is due one interval later
        unless what this one learns (:meth:`listed`, :meth:`failed`) says otherwise."""
        self.next_sweep = now + self.interval
        self.since_audit += 1
        return self.request()

    def request(self) -> SweepRequest:
        """The next sweep: unfiltered while probing or when the filter is refused (it then
        checks the watched names itself), filtered otherwise."""
        filtered = self.status is not SweepStatus.PROBING and self.filter
        return SweepRequest(self.names[self.name_index], self.filter if filtered else "")

    def audit(self, watched: Iterable[str] = ()) -> SweepRequest | None:
        """The full listing to run beside the filtered sweeps, if one is due: every
        VERIFY_EVERY-th sweep, and at once when a ``watched`` name was never checked against a
        full listing; it begins now. Run beside them, so that reading a long listing never
        holds up the sweeps that find completions. None while the sweeps check the names
        themselves (probing, or listing unfiltered)."""
        if self.status is not SweepStatus.WORKING or not self.filter:
            return None
        if self.since_audit < VERIFY_EVERY and all(
            n in self.verified or n in self.uncovered for n in watched
        ):
            return None
        spread, self.since_audit = max(1, self.since_audit), 0
        return SweepRequest(self.names[self.name_index], "", audit=True, spread=spread)

    def covers(self, name: str) -> bool:
        """Whether a working sweep covers ``name``: a full listing showed it and none missed it
        since (its single polls may then slow to SAFETY_NET)."""
        return (
            self.status is SweepStatus.WORKING
            and self.healthy
            and name in self.verified
            and name not in self.uncovered
        )

    # -- what was learned ------------------------------------------------------------------

    def listed(
        self,
        request: SweepRequest,
        *,
        listed: set[str],
        watched: set[str],
        found_done: int,
        pages: int,
        polls_per_second: float,
        started: float,
        operations: int = 0,
    ) -> None:
        """A sweep that ``started`` at that moment listed ``listed`` (every page: ``pages``
        calls, ``operations`` operations, ``found_done`` of them watched and done); ``watched``:
        the names watched meanwhile; ``polls_per_second``: what the watched ones would poll on
        their own. The interval runs from start to start: a sweep longer than it is followed at
        once by the next, so each page is read again one interval (or one sweep) later."""
        now = started
        cost = max(pages, operations / OPERATIONS_PER_CALL)
        if request.audit:
            # Checks names only, and only if the sweeps still list as it did (a sweep beside it
            # may have failed, dropped the filter or moved to the other request name).
            current = self.status is SweepStatus.WORKING and self.filter
            if current and request.name == self.names[self.name_index]:
                self._check_names(listed, watched)
                self.audit_cost = cost / request.spread  # each sweep's share
            return
        self.healthy = True
        if request.verifies and watched:
            if not listed & watched and self.status is SweepStatus.PROBING:
                self._next_name(now, f"listing {request.name!r} shows none of the watched names")
                return
            self._check_names(listed, watched)
            self.status = SweepStatus.WORKING
        if found_done:
            self.interval = max(MIN_INTERVAL, self.interval / 2)
        else:
            self.interval = min(MAX_INTERVAL, self.interval * 1.5)
        if polls_per_second > 0:  # the audits' share counted in
            self.interval = max(self.interval, (cost + self.audit_cost) / polls_per_second)
        self.next_sweep = now + self.interval

    def _check_names(self, listed: set[str], watched: set[str]) -> None:
        """A full listing showed ``listed``: which ``watched`` names it covers."""
        missing = watched - listed
        seen = listed & watched
        self.uncovered = (self.uncovered | missing) - seen
        self.verified = (self.verified | seen) - missing

    def failed(self, request: SweepRequest, error: BridgeError, *, now: float) -> None:
        """A page of the sweep failed with ``error``."""
        if isinstance(error, TransientError):
            # Covered watches poll on their own again until a sweep lists the collection.
            self.healthy = False
            self.next_sweep = now + RETRY_AFTER_ERROR
            return
        if error.code in (Code.UNIMPLEMENTED, Code.PERMISSION_DENIED):
            self._fail(f"ListOperations answered {error.code.name}")
        elif error.code is Code.INVALID_ARGUMENT and request.filter:
            self.filter = ""  # the filter is refused: list everything
            self.next_sweep = now
        elif error.code in (Code.INVALID_ARGUMENT, Code.NOT_FOUND):
            self._next_name(now, f"ListOperations({request.name!r}) answered {error.code.name}")
        else:
            self._fail(f"ListOperations answered {error.code.name}: {error.message}")

    def unreadable(self, name: str) -> None:
        """A listing showed ``name`` as an item that cannot be read: polled on its own."""
        self.uncovered.add(name)
        self.verified.discard(name)

    def missed(self, name: str) -> None:
        """A covered watch's own poll found it done: the filtered listing missed it."""
        if self.filter:
            self.misses += 1
            if self.misses >= MAX_MISSES:
                self.filter = ""
        self.uncovered.add(name)

    def forget(self, name: str) -> None:
        """``name`` is no longer watched here."""
        self.uncovered.discard(name)
        self.verified.discard(name)

    def _next_name(self, now: float, reason: str) -> None:
        if self.name_index + 1 < len(self.names):
            self.name_index += 1
            self.filter = DONE_FILTER
            self.next_sweep = now
        else:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.status = SweepStatus.FAILED
        self.reason = reason
