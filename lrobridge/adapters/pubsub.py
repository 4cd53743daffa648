"""The Pub/Sub adapter: publishing completion messages and creating the topic and subscriptions.

* :class:`PubSubPublisher` implements :class:`lrobridge.ports.BatchPublisher` with
  google-cloud-pubsub's ``PublisherClient``. One message at a time (``publish``) goes through the
  library's batching, with message ordering on. google-cloud-pubsub *pauses* an ordering key
  after a publish fails for good (every later publish with that key fails at once until
  ``resume_publish``); this adapter resumes the key before it reports the failure, so the
  caller's own retry (the watcher's backoff) goes through. Messages that come already batched
  and need no order (``publish_batch``: completions) skip the library's per-message batching
  and go as Publish requests of up to 1,000 messages (and the batch size) each, through the client's
  GAPIC ``publish`` with its default retry, on a few threads of the adapter's own.
* :class:`PubSubAdmin` makes topics and subscriptions exist as asked, idempotently, and says what
  it did (``created`` / ``updated`` / ``unchanged``), for ``lrobridge pubsub init``, ``lrobridge
  dev`` and the tests.

Every failure leaves here as a :class:`lrobridge.errors.BridgeError`, classified by
:func:`lrobridge.errors.classify_api_error`. ``PUBSUB_EMULATOR_HOST`` is honoured by the client
library itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from google.api_core import exceptions as api_exceptions
from google.api_core import retry
from google.auth import exceptions as auth_exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient, types
from google.protobuf import duration_pb2, field_mask_pb2
from google.pubsub_v1.services.publisher import client as gapic_publisher
from google.pubsub_v1.types import pubsub as pubsub_types

from lrobridge.errors import (
    AlreadyExists,
    BridgeError,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    classify_api_error,
)
from lrobridge.telemetry import setup

log = logging.getLogger("lrobridge.adapters.pubsub")

EnsureResult = Literal["created", "updated", "unchanged"]
T = TypeVar("T")

DEFAULT_BATCH_SETTINGS = types.BatchSettings(
    max_messages=100, max_bytes=1_000_000, max_latency=0.01
)
DEFAULT_CLOSE_TIMEOUT = 30.0
# One Publish request carries at most 1,000 messages and 10 MB (Pub/Sub's limits, as
# google-cloud-pubsub enforces them); publish_batch fills requests up to the client's own batch
# size (DEFAULT_BATCH_SETTINGS.max_bytes), a larger message goes alone.
MAX_REQUEST_MESSAGES = 1000
SERVER_MAX_REQUEST_BYTES = 10_000_000
BATCH_THREADS = 4  # Publish requests of publish_batch in flight at once
_PubsubMessagePb = pubsub_types.PubsubMessage.pb()
_PublishRequestPb = pubsub_types.PublishRequest.pb()


def _client_error(exc: BaseException) -> BridgeError:
    """A BridgeError for what creating a client can raise (missing credentials above all)."""
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return ConfigError(
            f"no Google credentials for Pub/Sub ({exc}); run `gcloud auth application-default "
            "login`, or set PUBSUB_EMULATOR_HOST to use an emulator"
        )
    return classify_api_error(exc)


class PubSubPublisher:
    """Publishes to one topic with batching and message ordering (the ``Publisher`` seam).

    ``publish`` returns a ``concurrent.futures.Future`` chained to the library's own future: it
    resolves to the message id, or fails with a ``BridgeError`` (the library's exception is its
    ``__cause__``) once the ordering key is already resumed. With ordering on, the library
    retries transient errors without a deadline, so only permanent errors (NOT_FOUND,
    PERMISSION_DENIED, ...) fail a future. ``publish_batch``'s requests retry transient errors
    with the GAPIC default (up to 10 minutes), then fail their futures as UNAVAILABLE; the
    caller's own backoff takes over from there (a retried request may publish twice: the
    messages carry their event id).
    """

    def __init__(
        self,
        topic_path: str,
        *,
        batch_settings: types.BatchSettings = DEFAULT_BATCH_SETTINGS,
        client: PublisherClient | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self.topic_path = topic_path
        self.close_timeout = close_timeout
        if client is None:
            try:
                client = PublisherClient(
                    batch_settings=batch_settings,
                    publisher_options=types.PublisherOptions(
                        enable_message_ordering=True,
                        # google-cloud-pubsub's own spans, and googclient_traceparent written
                        # from them: on when the OpenTelemetry SDK is (lrobridge.telemetry).
                        enable_open_telemetry_tracing=setup.pubsub_tracing(),
                    ),
                )
            except Exception as exc:
                raise _client_error(exc) from exc
        self._client = client
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[str]] = set()
        self._closed = False
        self._requests: concurrent.futures.ThreadPoolExecutor | None = None
        self._request_bytes = batch_settings.max_bytes

    def publish(
        self, data: bytes, attributes: dict[str, str], ordering_key: str
    ) -> concurrent.futures.Future[str]:
        """Queue one message; the future gives the server-assigned message id.

        Raises InvalidArgument for a message Pub/Sub can never accept (not bytes, too large)
        and FailedPrecondition after :meth:`close`.
        """
        out: concurrent.futures.Future[str] = concurrent.futures.Future()
        out.set_running_or_notify_cancel()  # a queued publish cannot be called back
        with self._lock:
            if self._closed:
                raise FailedPrecondition(f"the publisher for {self.topic_path} is closed")
            self._pending.add(out)
        try:
            inner = self._client.publish(
                self.topic_path, data, ordering_key=ordering_key, **attributes
            )
        except (TypeError, ValueError) as exc:  # bytes expected; MessageTooLargeError
            self._forget(out)
            raise InvalidArgument(f"cannot publish to {self.topic_path}: {exc}") from exc
        except RuntimeError as exc:  # the client was stopped underneath us
            self._forget(out)
            raise FailedPrecondition(f"cannot publish to {self.topic_path}: {exc}") from exc
        inner.add_done_callback(lambda f: self._settle(f, out, ordering_key))
        return out

    def publish_batch(
        self, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[concurrent.futures.Future[str]]:
        """Publish unordered messages in as few Publish requests as the limits allow; one
        future per message, in order, each resolving to its message id or failing with a
        ``BridgeError`` (every message of a request fails with it). A message over the request
        limit goes alone, so Pub/Sub's refusal names it. Raises FailedPrecondition after
        :meth:`close`."""
        futures: list[concurrent.futures.Future[str]] = []
        for _ in messages:
            future: concurrent.futures.Future[str] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            futures.append(future)
        with self._lock:
            if self._closed:
                raise FailedPrecondition(f"the publisher for {self.topic_path} is closed")
            if self._requests is None:
                self._requests = concurrent.futures.ThreadPoolExecutor(
                    BATCH_THREADS, thread_name_prefix="lrobridge-publish-request"
                )
            requests = self._requests
            self._pending.update(futures)
        for start, end in _request_bounds(messages, self._request_bytes):
            chunk = futures[start:end]
            if end - start == 1 and (refusal := self._too_large(messages[start])) is not None:
                self._fail(chunk, refusal)
                continue
            try:
                requests.submit(self._send, messages[start:end], chunk)
            except RuntimeError as exc:  # closed meanwhile
                self._fail(chunk, FailedPrecondition(f"cannot publish: {exc}"))
        return futures

    def _too_large(self, message: tuple[bytes, Mapping[str, str]]) -> InvalidArgument | None:
        """Why Pub/Sub would refuse ``message`` for its size (the library's own check), if so."""
        data, attributes = message
        if len(data) + sum(len(k) + len(v) for k, v in attributes.items()) < self._request_bytes:
            return None
        size = _PublishRequestPb(
            topic=self.topic_path,
            messages=[_PubsubMessagePb(data=data, attributes=attributes)],
        ).ByteSize()
        if size <= SERVER_MAX_REQUEST_BYTES:
            return None
        return InvalidArgument(
            f"cannot publish to {self.topic_path}: the message takes {size} bytes, over "
            f"Pub/Sub's {SERVER_MAX_REQUEST_BYTES} per publish request"
        )

    def _send(
        self,
        messages: Sequence[tuple[bytes, Mapping[str, str]]],
        futures: list[concurrent.futures.Future[str]],
    ) -> None:
        """One Publish request (a thread of the adapter's): resolve its messages' futures."""
        try:
            request = _PublishRequestPb(
                topic=self.topic_path,
                messages=[
                    _PubsubMessagePb(data=data, attributes=attributes)
                    for data, attributes in messages
                ],
            )
            response = gapic_publisher.PublisherClient.publish(
                self._client, request=pubsub_types.PublishRequest.wrap(request)
            )
            ids = list(response.message_ids)
            if len(ids) != len(futures):
                raise Unavailable(
                    f"Pub/Sub answered {len(ids)} message ids for {len(futures)} messages"
                )
        except Exception as exc:
            error = classify_api_error(exc)
            error.__cause__ = exc
            self._fail(futures, error)
            return
        for future, message_id in zip(futures, ids, strict=True):
            future.set_result(message_id)
        with self._lock:
            self._pending.difference_update(futures)

    def _fail(self, futures: list[concurrent.futures.Future[str]], error: BridgeError) -> None:
        for future in futures:
            future.set_exception(error)
        with self._lock:
            self._pending.difference_update(futures)

    def _settle(
        self,
        inner: concurrent.futures.Future[str],
        out: concurrent.futures.Future[str],
        ordering_key: str,
    ) -> None:
        try:
            exc = inner.exception()
            if exc is None:
                out.set_result(inner.result())
                return
            if ordering_key:
                self._resume(ordering_key)
            error = classify_api_error(exc)
            error.__cause__ = exc
            out.set_exception(error)
        finally:
            self._forget(out)

    def _resume(self, ordering_key: str) -> None:
        """Unpause the key (the library paused it before failing the futures)."""
        try:
            self._client.resume_publish(self.topic_path, ordering_key)
        except (RuntimeError, ValueError) as exc:
            # Not paused (another failed future of the same batch resumed it), or the
            # publisher is stopped: nothing to resume either way.
            log.debug("resume_publish(%s) skipped: %s", ordering_key, exc)

    def _forget(self, future: concurrent.futures.Future[str]) -> None:
        with self._lock:
            self._pending.discard(future)

    def close(self) -> None:
        """Send what is queued, wait up to ``close_timeout`` for it, close the channel."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
        with contextlib.suppress(RuntimeError):  # already stopped
            self._client.stop()
        if self._requests is not None:
            self._requests.shutdown(wait=False)  # the requests under way go on
        if pending:
            _, not_done = concurrent.futures.wait(pending, timeout=self.close_timeout)
            if not_done:
                log.warning(
                    "closing the publisher for %s with %d message(s) unconfirmed",
                    self.topic_path,
                    len(not_done),
                )
        self._client.transport.close()

    def __enter__(self) -> PubSubPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _request_bounds(
    messages: Sequence[tuple[bytes, Mapping[str, str]]], max_bytes: int
) -> list[tuple[int, int]]:
    """Split ``messages`` into runs of one Publish request each, at most MAX_REQUEST_MESSAGES
    and ``max_bytes`` (unless a message is larger alone): [(start, end), ...]."""
    bounds: list[tuple[int, int]] = []
    start = size = 0
    for i, (data, attributes) in enumerate(messages):
        # Framing aside, a message costs its data and its attributes' keys and values.
        cost = len(data) + sum(len(k) + len(v) for k, v in attributes.items())
        if i > start and (i - start >= MAX_REQUEST_MESSAGES or size + cost > max_bytes):
            bounds.append((start, i))
            start, size = i, 0
        size += cost
    if start < len(messages):
        bounds.append((start, len(messages)))
    return bounds


def _call(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except api_exceptions.RetryError as exc:  # gave up within the admin timeout
        raise Unavailable(f"{what}: Pub/Sub did not answer: {exc.cause or exc}") from exc
    except api_exceptions.GoogleAPICallError as exc:
        error = classify_api_error(exc)
        error.message = f"{what}: {error.message}"
        error.args = (error.message,)
        raise error from exc


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


class PubSubAdmin:
    """Idempotent topic and subscription management (``ensure_*`` return what they did)."""

    def __init__(
        self,
        *,
        publisher: PublisherClient | None = None,
        subscriber: SubscriberClient | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        # The library retries UNAVAILABLE for minutes by default; an admin command should say
        # within its timeout that Pub/Sub (or the emulator) cannot be reached.
        self._retry = retry.Retry(timeout=timeout)
        try:
            self._publisher = publisher or PublisherClient()
            self._subscriber = subscriber or SubscriberClient()
        except Exception as exc:
            raise _client_error(exc) from exc

    def ensure_topic(self, topic_path: str) -> EnsureResult:
        """Create the topic unless it exists."""
        try:
            _call(
                f"create topic {topic_path}",
                lambda: self._publisher.create_topic(
                    name=topic_path, timeout=self.timeout, retry=self._retry
                ),
            )
        except AlreadyExists:
            return "unchanged"
        return "created"

    def delete_topic(self, topic_path: str) -> None:
        _call(
            f"delete topic {topic_path}",
            lambda: self._publisher.delete_topic(
                topic=topic_path, timeout=self.timeout, retry=self._retry
            ),
        )

    def ensure_push_subscription(
        self,
        subscription_path: str,
        topic_path: str,
        push_endpoint: str,
        *,
        oidc_service_account: str | None,
        audience: str | None,
        ack_deadline: int = 60,
        enable_message_ordering: bool = True,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 10,
        min_backoff: float = 10.0,
        max_backoff: float = 600.0,
    ) -> EnsureResult:
        """Make a push subscription with exactly these settings exist.

        Creates it, or updates the push config, ack deadline, retry and dead-letter policy of
        an existing one that differs. FailedPrecondition when it exists on another topic or
        with another ordering setting (neither can change after creation).
        """
        push_config = types.PushConfig(push_endpoint=push_endpoint)
        if oidc_service_account:
            push_config.oidc_token.service_account_email = oidc_service_account
            push_config.oidc_token.audience = audience or ""
        elif audience:
            raise InvalidArgument("a push audience needs an OIDC service account")
        wanted = types.Subscription(
            name=subscription_path,
            topic=topic_path,
            push_config=push_config,
            ack_deadline_seconds=ack_deadline,
            enable_message_ordering=enable_message_ordering,
            retry_policy=types.RetryPolicy(
                minimum_backoff=_duration(min_backoff), maximum_backoff=_duration(max_backoff)
            ),
        )
        if dead_letter_topic:
            wanted.dead_letter_policy.dead_letter_topic = dead_letter_topic
            wanted.dead_letter_policy.max_delivery_attempts = max_delivery_attempts
        return self._ensure_subscription(
            wanted, ("push_config", "ack_deadline_seconds", "retry_policy", "dead_letter_policy")
        )

    def ensure_pull_subscription(
        self,
        subscription_path: str,
        topic_path: str,
        *,
        ack_deadline: int = 60,
        enable_message_ordering: bool = True,
    ) -> EnsureResult:
        """Make a pull subscription exist (a push one is turned into pull)."""
        wanted = types.Subscription(
            name=subscription_path,
            topic=topic_path,
            ack_deadline_seconds=ack_deadline,
            enable_message_ordering=enable_message_ordering,
        )
        return self._ensure_subscription(wanted, ("push_config", "ack_deadline_seconds"))

    def delete_subscription(self, subscription_path: str) -> None:
        _call(
            f"delete subscription {subscription_path}",
            lambda: self._subscriber.delete_subscription(
                subscription=subscription_path, timeout=self.timeout, retry=self._retry
            ),
        )

    def get_subscription(self, subscription_path: str) -> Any:
        """The subscription as Pub/Sub reports it (a ``types.Subscription``)."""
        return _call(
            f"get subscription {subscription_path}",
            lambda: self._subscriber.get_subscription(
                subscription=subscription_path, timeout=self.timeout, retry=self._retry
            ),
        )

    def _ensure_subscription(self, wanted: Any, updatable: tuple[str, ...]) -> EnsureResult:
        name = wanted.name
        try:
            _call(
                f"create subscription {name}",
                lambda: self._subscriber.create_subscription(
                    request=wanted, timeout=self.timeout, retry=self._retry
                ),
            )
            return "created"
        except AlreadyExists:
            pass
        current = self.get_subscription(name)
        if current.topic != wanted.topic:
            raise FailedPrecondition(
                f"subscription {name} exists on topic {current.topic}, not {wanted.topic}; "
                "delete it or choose another subscription id"
            )
        if current.enable_message_ordering != wanted.enable_message_ordering:
            raise FailedPrecondition(
                f"subscription {name} exists with enable_message_ordering="
                f"{current.enable_message_ordering}, which cannot change; delete and recreate it"
            )
        changed = [field for field in updatable if _differs(current, wanted, field)]
        if not changed:
            return "unchanged"
        _call(
            f"update subscription {name}",
            lambda: self._subscriber.update_subscription(
                request={
                    "subscription": wanted,
                    "update_mask": field_mask_pb2.FieldMask(paths=changed),
                },
                timeout=self.timeout,
                retry=self._retry,
            ),
        )
        log.info("updated %s of subscription %s", ", ".join(changed), name)
        return "updated"

    def close(self) -> None:
        """Close both clients' channels."""
        self._publisher.transport.close()
        self._subscriber.close()

    def __enter__(self) -> PubSubAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _differs(current: Any, wanted: Any, field: str) -> bool:
    """Whether ``field`` of two Subscription messages differs (unset equals its default).

    For ``push_config`` only the endpoint and the OIDC token count: Pub/Sub fills in defaults
    such as the ``x-goog-version`` attribute and the wrapper, which were never asked for.
    """
    mine = getattr(type(current).pb(current), field)
    theirs = getattr(type(wanted).pb(wanted), field)
    if field == "push_config":
        return bool(
            mine.push_endpoint != theirs.push_endpoint or mine.oidc_token != theirs.oidc_token
        )
    return bool(mine != theirs)
