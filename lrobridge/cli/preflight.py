"""Start-up checks of a process that publishes: a project is set, and Pub/Sub answers.

A watcher, ``lrobridge serve --watcher``, the Pub/Sub-driven watch mode and ``lrobridge dev``
publish completions; started without a project, or against a Pub/Sub (or emulator) that does not
answer, they used to run and fail only when something completed. :func:`check_publishing`
refuses at start instead, with one line that says what to set or start:

* no project: ConfigError naming GOOGLE_CLOUD_PROJECT / LROBRIDGE_PROJECT;
* ``PUBSUB_EMULATOR_HOST`` set: the emulator must answer (:func:`~lrobridge.cli.emulator.
  emulator_answers`, the check ``lrobridge dev`` makes) and have the topics;
* real Pub/Sub: each topic is read over REST with Application Default Credentials (10 s).
  A topic that does not exist is refused (``lrobridge pubsub init`` creates it); a 403 means
  Pub/Sub answered but this identity may only publish (roles/pubsub.publisher cannot read
  topics), which is enough.

REST over ``requests``, not a gRPC channel: the check opens nothing that must not outlive it
or cross a ``fork`` (a pre-forking WSGI server may import the app afterwards).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import requests
import requests.adapters
from urllib3.util.retry import Retry

from lrobridge.cli.emulator import emulator_answers
from lrobridge.config import Settings
from lrobridge.errors import ConfigError, FailedPrecondition, Unavailable

log = logging.getLogger("lrobridge.preflight")

PUBSUB_REST = "https://pubsub.googleapis.com/v1"
CHECK_TIMEOUT = 10.0


def publishing_topics(settings: Settings) -> list[str]:
    """The topics a publishing process of these settings writes to."""
    topics = [settings.topic_path]
    if settings.watch_mode == "pubsub":
        topics.append(settings.watch_topic_path)
    return topics


def check_publishing(settings: Settings, what: str, *, timeout: float = CHECK_TIMEOUT) -> None:
    """Refuse to start ``what`` unless it can publish (see the module docstring)."""
    settings.require_project(what)
    topics = publishing_topics(settings)
    if settings.emulator_host:
        if not emulator_answers(settings.emulator_host, timeout=min(timeout, 2.0)):
            raise Unavailable(
                f"{what}: the Pub/Sub emulator at PUBSUB_EMULATOR_HOST={settings.emulator_host} "
                "does not answer; start it (or `lrobridge dev`), or unset PUBSUB_EMULATOR_HOST"
            )
        _check_topics(
            requests.Session(), f"http://{settings.emulator_host}/v1", topics, what, timeout
        )
        return
    _check_topics(_authorized_session(what), PUBSUB_REST, topics, what, timeout)


def _authorized_session(what: str) -> requests.Session:
    import google.auth
    from google.auth import exceptions as auth_exceptions
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/pubsub"])
    except auth_exceptions.DefaultCredentialsError as exc:
        raise ConfigError(
            f"{what}: no Google credentials for Pub/Sub ({exc}); run `gcloud auth "
            "application-default login`, or set PUBSUB_EMULATOR_HOST to use an emulator"
        ) from None
    return AuthorizedSession(credentials)  # type: ignore[no-untyped-call]


def _check_topics(
    session: requests.Session, base: str, topics: Sequence[str], what: str, timeout: float
) -> None:
    # A GET is safe to repeat: a connection dropped once (an emulator that has just started
    # does that) is retried twice before Pub/Sub counts as not answering.
    retry = Retry(total=2, connect=2, read=2, status=0, backoff_factor=0.3)
    session.mount("http://", requests.adapters.HTTPAdapter(max_retries=retry))
    session.mount("https://", requests.adapters.HTTPAdapter(max_retries=retry))
    with session:
        for topic in topics:
            url = f"{base}/{topic}"
            try:
                response = session.get(url, timeout=timeout)
            except requests.RequestException as exc:
                raise Unavailable(f"{what}: Pub/Sub does not answer at {base}: {exc}") from None
            except Exception as exc:  # google-auth refreshing the token
                raise Unavailable(f"{what}: cannot reach Pub/Sub at {base}: {exc}") from None
            if response.status_code == 404:
                raise FailedPrecondition(
                    f"{what}: the topic {topic} does not exist; create it with `lrobridge "
                    "pubsub init --push-endpoint URL` (or terraform/)"
                )
            if response.status_code == 403:
                log.info("Pub/Sub answers; this identity cannot read %s (publishing may)", topic)
                continue
            if response.status_code >= 400:
                raise Unavailable(
                    f"{what}: Pub/Sub answered HTTP {response.status_code} for {topic}: "
                    f"{response.text[:200]}"
                )
