"""The Cloud Tasks adapter: named HTTP tasks with an OIDC token (a ``ports.TaskQueue``).

:class:`CloudTasksQueue` creates and deletes tasks with google-cloud-tasks' ``CloudTasksClient``.
Each task is an HTTP ``POST`` of a JSON body to a URL of this service, scheduled at an exact
``schedule_time``, and carries an OIDC token minted by Cloud Tasks for the configured service
account and audience (``oidc_token``); the task routes verify that token against the same
configuration (:mod:`lrobridge.adapters.push_auth`). ``ALREADY_EXISTS`` on create (the same
name was created, ran or was deleted recently) is an answer, not an error: the caller asked for
a task that already exists. Calls are retried on transient errors by google-api-core's
``Retry``; what still fails leaves as a :class:`~lrobridge.errors.BridgeError`
(:func:`~lrobridge.errors.classify_api_error`).

``LROBRIDGE_TASKS_EMULATOR_HOST`` points the client at an emulator over plaintext gRPC without
credentials (the ``gcloud-tasks-emulator`` package mints no OIDC token: see docs/deploy.md).
"""

from __future__ import annotations

import datetime
import logging
import threading

from google.api_core import exceptions as api_exceptions
from google.api_core import retry
from google.cloud import tasks_v2
from google.protobuf import timestamp_pb2

from lrobridge.config import Settings
from lrobridge.errors import classify_api_error

log = logging.getLogger(__name__)

# Cloud Tasks refuses a schedule_time more than 30 days ahead.
MAX_SCHEDULE_AHEAD = 30 * 86400.0
CALL_TIMEOUT = 10.0
_RETRY = retry.Retry(
    initial=0.1,
    maximum=2.0,
    multiplier=2.0,
    timeout=CALL_TIMEOUT,
    predicate=retry.if_exception_type(
        api_exceptions.ServiceUnavailable,
        api_exceptions.DeadlineExceeded,
        api_exceptions.InternalServerError,
        api_exceptions.TooManyRequests,
    ),
)


class CloudTasksQueue:
    """Creates and deletes the bridge's tasks on Cloud Tasks (or its emulator)."""

    def __init__(self, settings: Settings, *, client: tasks_v2.CloudTasksClient | None = None):
        self._settings = settings
        self._client = client
        self._lock = threading.Lock()

    def _tasks(self) -> tasks_v2.CloudTasksClient:
        with self._lock:
            if self._client is None:
                host = self._settings.tasks_emulator_host
                if host:
                    import grpc
                    from google.cloud.tasks_v2.services.cloud_tasks.transports import (
                        CloudTasksGrpcTransport,
                    )

                    channel = grpc.insecure_channel(host)
                    self._client = tasks_v2.CloudTasksClient(
                        transport=CloudTasksGrpcTransport(channel=channel)
                    )
                else:
                    self._client = tasks_v2.CloudTasksClient()
            return self._client

    def create(self, queue: str, name: str, *, url: str, body: bytes, schedule_time: float) -> bool:
        parent = self._settings.queue_path(queue)
        request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=url,
            headers={"Content-Type": "application/json"},
            body=body,
        )
        if self._settings.tasks_service_account:
            request.oidc_token = tasks_v2.OidcToken(
                service_account_email=self._settings.tasks_service_account,
                audience=self._settings.tasks_token_audience,
            )
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(datetime.datetime.fromtimestamp(schedule_time, datetime.UTC))
        task = tasks_v2.Task(name=f"{parent}/tasks/{name}", http_request=request)
        task.schedule_time = stamp
        try:
            self._tasks().create_task(parent=parent, task=task, retry=_RETRY, timeout=CALL_TIMEOUT)
        except api_exceptions.AlreadyExists:
            return False
        except Exception as exc:
            raise classify_api_error(exc) from exc
        return True

    def delete(self, queue: str, name: str) -> bool:
        path = f"{self._settings.queue_path(queue)}/tasks/{name}"
        try:
            self._tasks().delete_task(name=path, retry=_RETRY, timeout=CALL_TIMEOUT)
        except api_exceptions.NotFound:
            return False
        except Exception as exc:
            raise classify_api_error(exc) from exc
        return True

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.transport.close()  # type: ignore[no-untyped-call]
                self._client = None
