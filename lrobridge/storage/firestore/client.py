"""Firestore plumbing shared by the Firestore stores (:mod:`lrobridge.storage.firestore.store`,
:mod:`lrobridge.storage.firestore.webhooks`): one client per process, bounded retries, one error
mapping, transactions, lease claims by conditional writes, and the digests used as document ids.

Errors. Every failure of a Firestore call surfaces as :class:`~lrobridge.errors.Unavailable`
(a TransientError): from the caller's point of view the store is unreachable, whatever the
cause (an outage, a missing index, missing IAM grants, a transaction that kept conflicting), and
the same call may succeed later; a push is nacked (503) and redelivered. The message names the
gRPC status and what to fix. Domain outcomes (AlreadyExists, NotFound, FailedPrecondition) are
decided by the stores themselves.

Bounded retries. google-cloud-firestore retries UNAVAILABLE for 60 s (commits, transactions)
to 300 s (queries) by default, which would hold a push request for minutes during an outage.
:class:`Retries` holds google-api-core ``Retry`` values with the library's own predicates but a
total deadline of ``timeout`` seconds (10 s by default), and every call the stores make passes
them with the client's public per-call ``retry=`` and ``timeout=`` (``DocumentReference.get``,
``Client.get_all``, ``Query.stream``, ``AggregationQuery.get``, ``WriteBatch.commit``,
``BulkWriteBatch.commit``; reads inside a transaction pass :attr:`FirestoreDatabase.reads`).
Only a transaction's BeginTransaction, Commit and Rollback have no such argument:
:func:`_bound_retries` sets their default policy in the transport (private internals).

Claims. A lease is taken by a *conditional write* whose precondition is the document's update
time as the query that found it due read it: the single-document form of a read-modify-write
transaction. It re-checks that nothing changed the document since it was seen due and takes no
lock, so instances racing for the same due documents never block each other (a read-write
transaction locks what it reads, and two claimers of one document deadlock until one is
aborted: seconds on the emulator, contention in production). All the claims of one round go in
one non-atomic ``BatchWrite`` call with a status per document.

Adapter module: it imports google-cloud-firestore, which core modules must not (ruff
banned-api in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from google.api_core import exceptions as api_exceptions
from google.api_core import gapic_v1
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.bulk_batch import BulkWriteBatch
from google.cloud.firestore_v1.collection import CollectionReference
from google.cloud.firestore_v1.document import DocumentReference
from google.cloud.firestore_v1.query import Query
from google.cloud.firestore_v1.transaction import Transaction

from lrobridge.config import DEFAULT_FIRESTORE_DATABASE
from lrobridge.errors import BridgeError, ConfigError, InvalidArgument, Unavailable

T = TypeVar("T")
if TYPE_CHECKING:
    Doc = DocumentSnapshot[Any]
    Queryable = Query | CollectionReference

DEFAULT_PREFIX = "lrobridge_"
DEFAULT_TIMEOUT = 10.0  # seconds one Firestore call may take, retries included
TRANSACTION_ATTEMPTS = 10  # tries of a transaction that conflicts with others (ABORTED)
# Documents scanned at most by one listing call that filters in Python (a page may come back
# shorter, even empty, with a cursor to continue: AIP-158 allows it).
SCAN_BUDGET = 2000

_READ_RETRYABLE = (
    api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
    api_exceptions.ServiceUnavailable,
)
_WRITE_RETRYABLE = (api_exceptions.ResourceExhausted, api_exceptions.ServiceUnavailable)
# The RPCs the stores make, and what each may retry (the library's own choices).
_BATCH_WRITE_RETRYABLE = (*_WRITE_RETRYABLE, api_exceptions.Aborted)


@dataclasses.dataclass(frozen=True)
class Retries:
    """The retry policies of Firestore calls (google-api-core ``Retry`` values, immutable):
    reads, commits, and the non-atomic BatchWrite of claims. Passed per call as ``retry=``."""

    read: api_retry.Retry
    write: api_retry.Retry
    batch_write: api_retry.Retry

    @classmethod
    def bounded(
        cls, deadline: float, *, on_error: Callable[[Exception], None] | None = None
    ) -> Retries:
        """The library's predicates, a total deadline of ``deadline`` seconds; ``on_error``
        sees each error that is retried."""

        def policy(retryable: tuple[type[Exception], ...]) -> api_retry.Retry:
            return api_retry.Retry(
                initial=0.1,
                maximum=2.0,
                multiplier=2.0,
                predicate=api_retry.if_exception_type(*retryable),
                timeout=deadline,
                on_error=on_error,
            )

        return cls(
            read=policy(_READ_RETRYABLE),
            write=policy(_WRITE_RETRYABLE),
            batch_write=policy(_BATCH_WRITE_RETRYABLE),
        )


def eq(field: str, value: Any) -> firestore.FieldFilter:
    """The filter ``field == value``."""
    return firestore.FieldFilter(field, "==", value)


def digest(*parts: str) -> str:
    """A document id standing for a tuple of strings (a unique key): SHA-256, hex."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def random_int_id() -> int:
    """A positive int64 id for documents whose protocol id is an int (outbox, quarantine)."""
    return secrets.randbits(62) + 1


def usable_id(doc_id: str) -> bool:
    """Whether ``doc_id`` can name a document (ids that cannot name none)."""
    return bool(doc_id) and "/" not in doc_id and doc_id not in (".", "..")


def fields(snapshot: Doc) -> dict[str, Any]:
    """The fields of an existing document."""
    return cast(dict[str, Any], snapshot.to_dict())


class CreationOrder:
    """Sort keys in creation order for listings: the create time in zero-padded microseconds,
    then a unique id. Strictly increasing within one object (several creations in the same
    microsecond, or a clock that does not move), by clock across instances."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_micros = 0

    def key(self, now: float, unique: str) -> str:
        with self._lock:
            micros = max(int(max(now, 0.0) * 1_000_000), self._last_micros + 1)
            self._last_micros = micros
        return f"{micros:020d}-{unique}"


class FirestoreDatabase:
    """One Firestore database seen through collections named ``prefix + name``."""

    def __init__(
        self,
        *,
        project: str,
        database: str = DEFAULT_FIRESTORE_DATABASE,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        retries: Retries | None = None,
    ) -> None:
        if not project:
            raise ConfigError(
                "LROBRIDGE_STORE=firestore://...: no Google Cloud project for Firestore; set "
                "GOOGLE_CLOUD_PROJECT or LROBRIDGE_PROJECT (the Pub/Sub topic's project)"
            )
        self.project = project
        self.database = database or DEFAULT_FIRESTORE_DATABASE
        self.prefix = prefix
        self.timeout = timeout
        self.retries = retries or Retries.bounded(timeout)
        # The per-call options of a read: ``ref.get(transaction=tx, **db.reads)``.
        self.reads: dict[str, Any] = {"retry": self.retries.read, "timeout": timeout}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._client = self._connect()

    def _connect(self) -> firestore.Client:
        try:
            client = firestore.Client(project=self.project, database=self.database)
        except auth_exceptions.DefaultCredentialsError as exc:
            raise ConfigError(
                f"Firestore (LROBRIDGE_STORE=firestore://{self.database}): no Application "
                f"Default Credentials: {exc}"
            ) from None
        _bound_retries(client, self.retries, self.timeout)
        return client

    @property
    def client(self) -> firestore.Client:
        """The client of this process (a gRPC channel must not cross ``fork``)."""
        with self._lock:
            if os.getpid() != self._pid:
                self._pid = os.getpid()
                self._client = self._connect()
            return self._client

    def collection(self, name: str) -> CollectionReference:
        return self.client.collection(self.prefix + name)

    def close(self) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                cast(Any, self._client).close()

    # -- calls ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Translate any Firestore failure inside the block into Unavailable, except a write
        Firestore refuses as such (a document over its 1 MiB limit): InvalidArgument, since
        retrying cannot help."""
        try:
            yield
        except BridgeError:
            raise
        except api_exceptions.InvalidArgument as exc:
            raise InvalidArgument(f"Firestore refused to {what}: {_describe(exc)}") from exc
        except api_exceptions.GoogleAPIError as exc:
            raise Unavailable(f"Firestore could not {what}: {_describe(exc)}") from exc
        except auth_exceptions.GoogleAuthError as exc:
            raise Unavailable(f"Firestore could not {what}: no usable credentials ({exc})") from exc

    def transact(self, what: str, body: Callable[[Transaction], T]) -> T:
        """Run ``body`` in a read-write transaction, again when it conflicts with another.

        ``body`` reads everything first, then writes; an exception it raises rolls it back and
        comes out unchanged. A conflict (ABORTED) at commit is retried by the library, which
        keeps the transaction's place in line; one on a read inside ``body`` (a lock wait that
        timed out) is not, so the whole transaction is run again here."""
        run = cast(Callable[[Transaction], T], firestore.transactional(body))
        with self.errors(what):
            for _ in range(TRANSACTION_ATTEMPTS):
                try:
                    return run(self.client.transaction(max_attempts=TRANSACTION_ATTEMPTS))
                except ValueError as exc:
                    # The library reports two Firestore failures as ValueError: too many
                    # conflicts at commit (the last ABORTED is the cause), and a failed begin
                    # (its error is the context of "cannot be rolled back").
                    if isinstance(exc.__cause__, api_exceptions.Aborted):
                        break
                    if isinstance(exc.__context__, api_exceptions.GoogleAPIError):
                        raise exc.__context__ from None
                    raise
                except api_exceptions.GoogleAPIError as exc:
                    if not _aborted(exc):
                        raise
            raise Unavailable(
                f"Firestore could not {what}: the transaction conflicted with others "
                f"{TRANSACTION_ATTEMPTS} times in a row"
            )

    def read(self, what: str, ref: DocumentReference) -> Doc:
        with self.errors(what):
            return ref.get(retry=self.retries.read, timeout=self.timeout)

    def read_many(self, what: str, refs: Sequence[DocumentReference]) -> list[Doc]:
        """Snapshots of ``refs`` in their order (missing documents included, not existing)."""
        found: dict[str, Doc] = {}
        with self.errors(what):
            for start in range(0, len(refs), 300):
                batch = list(refs[start : start + 300])
                for snapshot in self.client.get_all(
                    batch, retry=self.retries.read, timeout=self.timeout
                ):
                    found[snapshot.reference.path] = snapshot
        return [found[ref.path] for ref in refs]

    def query(self, what: str, query: Queryable) -> list[Doc]:
        with self.errors(what):
            return list(query.stream(retry=self.retries.read, timeout=self.timeout))

    def count(self, what: str, query: Queryable) -> int:
        with self.errors(what):
            aggregation: Any = query.count(alias="n")
            result: Any = aggregation.get(retry=self.retries.read, timeout=self.timeout)
        return int(result[0][0].value)

    def claim(
        self,
        what: str,
        candidates: Sequence[Doc],
        changes: Callable[[Doc], dict[str, Any]],
    ) -> list[Doc]:
        """Apply ``changes`` to each candidate unless it changed since it was read; the
        candidates whose write went through (the ones this caller now holds)."""
        if not candidates:
            return []
        client = self.client
        batch = BulkWriteBatch(client)
        for snapshot in candidates:
            batch.update(
                snapshot.reference,
                changes(snapshot),
                option=client.write_option(last_update_time=snapshot.update_time),
            )
        with self.errors(what):
            response = batch.commit(retry=self.retries.batch_write, timeout=self.timeout)
        return [s for s, st in zip(candidates, response.status, strict=True) if st.code == 0]

    def write_batches(
        self, what: str, writes: Iterable[Callable[[firestore.WriteBatch], None]]
    ) -> None:
        """Apply many writes in atomic batches of at most 400 (bulk deletes)."""
        pending: list[Callable[[firestore.WriteBatch], None]] = []
        for write in writes:
            pending.append(write)
            if len(pending) == 400:
                self._commit(what, pending)
                pending = []
        if pending:
            self._commit(what, pending)

    def _commit(self, what: str, writes: list[Callable[[firestore.WriteBatch], None]]) -> None:
        batch = self.client.batch()
        for write in writes:
            write(batch)
        self.commit(what, batch)

    def commit(self, what: str, batch: firestore.WriteBatch) -> None:
        """Commit an atomic batch of writes (bounded retries, errors mapped)."""
        with self.errors(what):
            batch.commit(retry=self.retries.write, timeout=self.timeout)


def _aborted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or (replaced by a failed rollback) comes from, an ABORTED."""
    return isinstance(exc, api_exceptions.Aborted) or isinstance(
        exc.__context__, api_exceptions.Aborted
    )


def _describe(exc: api_exceptions.GoogleAPIError) -> str:
    if isinstance(exc, api_exceptions.RetryError):
        cause = exc.cause
        text = _describe(cause) if isinstance(cause, api_exceptions.GoogleAPIError) else ""
        return f"gave up after retrying{': ' + text if text else ''}"
    if not isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"{type(exc).__name__}: {exc}"
    status = exc.grpc_status_code.name if exc.grpc_status_code is not None else str(exc.code)
    text = f"{status}: {exc.message}"
    if isinstance(exc, api_exceptions.PermissionDenied):
        text += " (the bridge's service account needs roles/datastore.user)"
    elif isinstance(exc, api_exceptions.FailedPrecondition) and "index" in exc.message:
        text += " (create the indexes in terraform/modules/lrobridge/firestore.tf)"
    return text


# The RPCs made without a public per-call retry, and their policy: a transaction
# (``Client.transaction`` / ``firestore.transactional``) calls BeginTransaction, Commit and
# Rollback with no ``retry`` argument at all. Everything else passes ``Retries`` per call
# (reads inside a transaction too: ``ref.get(transaction=tx, **db.reads)``).
_DEFAULT_POLICY_RPCS: dict[str, Callable[[Retries], api_retry.Retry]] = {
    "begin_transaction": lambda r: r.read,
    "rollback": lambda r: r.read,
    "commit": lambda r: r.write,
}


def _bound_retries(client: firestore.Client, retries: Retries, deadline: float) -> None:
    """Make ``retries`` the default of the RPCs in ``_DEFAULT_POLICY_RPCS``.

    PRIVATE INTERNALS: the library fixes its default retry policies when it builds its GAPIC
    transport and offers no public setting for them, and a transaction's begin/commit/rollback
    take no ``retry`` argument; so the transport's wrapped methods
    (``client._firestore_api._transport._wrapped_methods``) are replaced here, once per client,
    with google-api-core's own ``wrap_method``. A call that passes ``retry=`` (every call of
    :class:`FirestoreDatabase`) overrides these defaults."""
    api: Any = client._firestore_api  # builds the GAPIC client and its transport
    transport = api._transport
    client_info = client._client_info
    for name, policy in _DEFAULT_POLICY_RPCS.items():
        rpc = getattr(transport, name)
        wrap: Any = gapic_v1.method.wrap_method
        transport._wrapped_methods[rpc] = wrap(
            rpc,
            default_retry=policy(retries),
            default_timeout=deadline,
            client_info=client_info,
        )
