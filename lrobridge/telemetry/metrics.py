"""The bridge's metrics: one function per thing counted, and gauges read from the store.

Every instrument is listed in :data:`METRICS` (name -> unit, description); the Terraform alert
policies name some of them and ``tests/unit/test_terraform.py`` checks they exist here. Names
use dots; Prometheus shows them with underscores and a unit suffix
(``lrobridge_webhook_dead_letters_total``), Cloud Monitoring as
``workload.googleapis.com/<name>``.

Off (the default) each recording function is one test of a module flag. :func:`use` turns
them on with a ``MeterProvider`` (the SDK's, from :mod:`lrobridge.telemetry.setup`, or a
test's with an ``InMemoryMetricReader``). Gauges (watches by state, outbox backlog and oldest
entry age, disabled webhooks) are observed from the stores given to :func:`observe`: one cheap
query each, only when a reader collects. Only the OpenTelemetry API is imported: pure module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from lrobridge.core import codec
from lrobridge.core.records import WatchState
from lrobridge.errors import BridgeError, NotFound, TransientError

if TYPE_CHECKING:  # the metrics API is imported when metrics are turned on, not before
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

METER_NAME = "lrobridge"

# name -> (unit, description). Counters get ``_total`` in Prometheus.
METRICS: dict[str, tuple[str, str]] = {
    "lrobridge.watches": ("{watch}", "Watches by state (gauge)."),
    "lrobridge.polls": ("{poll}", "Polls of an Operations source, by source and result."),
    "lrobridge.watch.failures": (
        "{watch}",
        "Watches that failed at their source (a permanent error), by source.",
    ),
    "lrobridge.detection_lag": (
        "s",
        "Completion observed minus the operation's last pending observation.",
    ),
    "lrobridge.publish.duration": ("s", "From handing a message to Pub/Sub to its answer."),
    "lrobridge.publish.failures": ("{message}", "Publishes that failed, by what happens next."),
    "lrobridge.outbox.backlog": ("{message}", "Messages not yet acknowledged by Pub/Sub."),
    "lrobridge.outbox.oldest_age": ("s", "Age of the oldest unacknowledged message."),
    "lrobridge.push.outcomes": ("{push}", "Pushes by route and outcome (ack, retry, quarantine)."),
    "lrobridge.callback.duration": ("s", "Callback run time, by callback and result."),
    "lrobridge.callback.failures": ("{run}", "Callbacks that raised, by callback."),
    "lrobridge.webhook.attempts": ("{attempt}", "Webhook attempts by result."),
    "lrobridge.webhook.delivery_latency": (
        "s",
        "From the delivery being written to its successful attempt.",
    ),
    "lrobridge.webhook.dead_letters": ("{delivery}", "Deliveries dead-lettered."),
    "lrobridge.webhook.disabled_endpoints": ("{webhook}", "Webhooks currently disabled (gauge)."),
}

# Explicit bucket boundaries (seconds) for the latency histograms: polls space out to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class WatchCounts(Protocol):
    """What the watch and outbox gauges read of the main store."""

    def count_by_state(self) -> dict[WatchState, int]: ...

    def outbox_size(self) -> int: ...

    def outbox_oldest_time(self) -> float | None: ...


class DisabledWebhooks(Protocol):
    """What the disabled-endpoints gauge reads of the webhook store."""

    def all_webhooks(self) -> Sequence[Any]: ...


class _Instruments:
    def __init__(self, meter: metrics.Meter) -> None:
        def described(name: str) -> dict[str, str]:
            unit, description = METRICS[name]
            return {"name": name, "unit": unit, "description": description}

        def histogram(name: str) -> metrics.Histogram:
            return meter.create_histogram(
                **described(name), explicit_bucket_boundaries_advisory=LATENCY_BUCKETS
            )

        self.polls = meter.create_counter(**described("lrobridge.polls"))
        self.watch_failures = meter.create_counter(**described("lrobridge.watch.failures"))
        self.detection_lag = histogram("lrobridge.detection_lag")
        self.publish_duration = histogram("lrobridge.publish.duration")
        self.publish_failures = meter.create_counter(**described("lrobridge.publish.failures"))
        self.push_outcomes = meter.create_counter(**described("lrobridge.push.outcomes"))
        self.callback_duration = histogram("lrobridge.callback.duration")
        self.callback_failures = meter.create_counter(**described("lrobridge.callback.failures"))
        self.webhook_attempts = meter.create_counter(**described("lrobridge.webhook.attempts"))
        self.delivery_latency = histogram("lrobridge.webhook.delivery_latency")
        self.dead_letters = meter.create_counter(**described("lrobridge.webhook.dead_letters"))
        meter.create_observable_gauge(
            callbacks=[_observe_watches], **described("lrobridge.watches")
        )
        meter.create_observable_gauge(
            callbacks=[_observe_backlog], **described("lrobridge.outbox.backlog")
        )
        meter.create_observable_gauge(
            callbacks=[_observe_oldest], **described("lrobridge.outbox.oldest_age")
        )
        meter.create_observable_gauge(
            callbacks=[_observe_disabled], **described("lrobridge.webhook.disabled_endpoints")
        )


_on: _Instruments | None = None
_lock = threading.Lock()
_stores: list[WatchCounts] = []
_webhook_stores: list[DisabledWebhooks] = []
_clock: Callable[[], float] = time.time


def use(provider: metrics.MeterProvider | None) -> None:
    """Record with ``provider`` from now on (None: stop)."""
    global _on
    _on = None if provider is None else _Instruments(provider.get_meter(METER_NAME))


def enabled() -> bool:
    return _on is not None


def observe(store: WatchCounts | None = None, webhooks: DisabledWebhooks | None = None) -> None:
    """Report the gauges from these stores (one of each kind is enough: they are shared)."""
    with _lock:
        if store is not None and all(s is not store for s in _stores):
            _stores[:] = [store]
        if webhooks is not None and all(w is not webhooks for w in _webhook_stores):
            _webhook_stores[:] = [webhooks]


def forget(store: object) -> None:
    """Stop reading ``store`` (it is closing)."""
    with _lock:
        _stores[:] = [s for s in _stores if s is not store]
        _webhook_stores[:] = [w for w in _webhook_stores if w is not store]


def forget_all() -> None:
    """Read no store any more (tests, between runs)."""
    with _lock:
        _stores.clear()
        _webhook_stores.clear()


def _safe(read: Callable[[], Iterable[Observation]]) -> Iterable[Observation]:
    try:
        return list(read())
    except Exception:  # a store that is closing or unavailable reports nothing this round
        return []


def _observe_watches(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    def read() -> Iterable[Observation]:
        for store in list(_stores):
            for state, count in store.count_by_state().items():
                yield Observation(count, {"state": state.name})

    return _safe(read)


def _observe_backlog(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    return _safe(lambda: [Observation(s.outbox_size()) for s in list(_stores)])


def _observe_oldest(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    def read() -> Iterable[Observation]:
        for store in list(_stores):
            oldest = store.outbox_oldest_time()
            yield Observation(0.0 if oldest is None else max(0.0, _clock() - oldest))

    return _safe(read)


def _observe_disabled(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    def read() -> Iterable[Observation]:
        for store in list(_webhook_stores):
            hooks = store.all_webhooks()
            yield Observation(sum(1 for h in hooks if getattr(h.state, "value", "") == "DISABLED"))

    return _safe(read)


# -- recording (each a no-op when off) -------------------------------------------------------


def poll_result(observed: codec.Snapshot | BridgeError) -> str:
    """The ``result`` label of lrobridge.polls for what one poll observed."""
    if isinstance(observed, NotFound):
        return "not_found"
    if isinstance(observed, TransientError):
        return "transient_error"
    if isinstance(observed, BridgeError):
        return "failed"
    return "pending" if observed.outcome() is None else "done"


def poll(source: str, result: str) -> None:
    """One poll of ``source``: ``pending``, ``done``, ``not_found``, ``transient_error``,
    ``failed``."""
    if _on is not None:
        _on.polls.add(1, {"source": source, "result": result})


def watch_failed(source: str) -> None:
    if _on is not None:
        _on.watch_failures.add(1, {"source": source})


def detection_lag(seconds: float, *, source: str) -> None:
    if _on is not None:
        _on.detection_lag.record(max(0.0, seconds), {"source": source})


def published(seconds: float) -> None:
    if _on is not None:
        _on.publish_duration.record(max(0.0, seconds), {"result": "ok"})


def publish_failed(seconds: float, *, next_step: str) -> None:
    """A failed publish: ``next_step`` is ``retry`` or ``quarantine``."""
    if _on is not None:
        _on.publish_duration.record(max(0.0, seconds), {"result": "error"})
        _on.publish_failures.add(1, {"next": next_step})


def push(route: str, outcome: str) -> None:
    """A push answered: ``outcome`` is ``ack``, ``retry``, ``quarantine`` or ``refused``."""
    if _on is not None:
        _on.push_outcomes.add(1, {"route": route, "outcome": outcome})


def callback(name: str, seconds: float, *, ok: bool) -> None:
    if _on is not None:
        attributes = {"callback": name, "result": "ok" if ok else "error"}
        _on.callback_duration.record(max(0.0, seconds), attributes)
        if not ok:
            _on.callback_failures.add(1, {"callback": name})


def webhook_attempt(result: str, status_code: int) -> None:
    """One attempt: ``result`` is ``succeeded``, ``retrying``, ``dead`` or ``lost_lease``."""
    if _on is not None:
        status = f"{status_code // 100}xx" if status_code else "none"
        _on.webhook_attempts.add(1, {"result": result, "status_class": status})


def delivered(seconds: float) -> None:
    if _on is not None:
        _on.delivery_latency.record(max(0.0, seconds))


def dead_lettered(reason: str) -> None:
    """A delivery became DEAD: ``reason`` is ``exhausted`` or ``disabled``."""
    if _on is not None:
        _on.dead_letters.add(1, {"reason": reason})
