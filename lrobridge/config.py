"""Configuration: every environment variable lrobridge reads, documented in one place.

``Settings.from_env()`` is the only code that looks at ``os.environ`` for lrobridge's own
variables (google-cloud-pubsub reads ``PUBSUB_EMULATOR_HOST`` itself, google-cloud-firestore
``FIRESTORE_EMULATOR_HOST``). A bad value raises
:class:`~lrobridge.errors.ConfigError` naming the variable and what it accepts.

This module is pure: no gRPC, Flask, Pub/Sub or HTTP client imports.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from lrobridge.errors import ConfigError

PayloadFormat = Literal["binary", "json"]
PushAuth = Literal["oidc", "cloudrun", "none"]
WatchMode = Literal["poller", "pubsub", "tasks"]
ApiAuth = Literal["key", "none"]
LogFormat = Literal["text", "json"]
WebhookDelivery = Literal["auto", "background", "request"]

# name -> (default, what it means). README.md's configuration table mirrors this dict, and
# tests/unit/test_config.py fails when either lists a variable the other does not.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "PORT": ("8080", "HTTP port of the Flask app (push endpoint, REST API, health)."),
    "GOOGLE_CLOUD_PROJECT": ("", "Project of the Pub/Sub topic (LROBRIDGE_PROJECT wins if set)."),
    "LROBRIDGE_PROJECT": ("", "Project of the Pub/Sub topic; overrides GOOGLE_CLOUD_PROJECT."),
    "PUBSUB_EMULATOR_HOST": ("", "host:port of a Pub/Sub emulator (read by google-cloud-pubsub)."),
    "FIRESTORE_EMULATOR_HOST": (
        "",
        "host:port of a Firestore emulator (read by google-cloud-firestore).",
    ),
    "LROBRIDGE_TOPIC": ("lro-completed", "Topic id that completions are published to."),
    "LROBRIDGE_SUBSCRIPTION": (
        "lro-completed-push",
        "Push subscription id that `lrobridge pubsub init` creates.",
    ),
    "LROBRIDGE_STORE": (
        "",
        "Where watches, deliveries and dedup state live: sqlite:///path (one machine; a relative "
        "path is made absolute against the working folder once, at start) or "
        "firestore://[DATABASE] (shared by every instance; empty or `(default)` is the default "
        "database, in the Pub/Sub project). Unset: "
        "sqlite:///$XDG_STATE_HOME/lrobridge/lrobridge.db, the same file for every process of "
        "the user whatever folder it runs in; the path is logged at start.",
    ),
    "XDG_STATE_HOME": (
        "",
        "Base folder of per-user state (XDG Base Directory spec); the default store is "
        "`lrobridge/lrobridge.db` in it. Unset or relative: `~/.local/state`.",
    ),
    "LROBRIDGE_PUSH_AUTH": (
        "oidc",
        "How /pubsub/push and /pubsub/watch authenticate Pub/Sub: `oidc` (verify the bearer ID "
        "token), `cloudrun` (behind Cloud Run IAM, which verified it and removed its signature: "
        "check its claims) or `none`.",
    ),
    "LROBRIDGE_PUSH_AUDIENCE": (
        "",
        "Expected `aud` of push tokens; empty means LROBRIDGE_PUBLIC_URL + `/pubsub/push` (or "
        "`/pubsub/watch`). With push auth on and neither set, the bridge refuses to start.",
    ),
    "LROBRIDGE_PUBLIC_URL": (
        "",
        "The bridge's public base URL (`https://SERVICE-HASH.REGION.run.app`), the trusted "
        "source of token audiences when LROBRIDGE_PUSH_AUDIENCE / LROBRIDGE_API_AUDIENCE are "
        "empty; never taken from the request (Cloud Run does not tell a service its URL).",
    ),
    "LROBRIDGE_TRUSTED_PROXIES": (
        "0",
        "How many proxies in front set X-Forwarded-For/-Proto/-Host (werkzeug ProxyFix); 0 "
        "trusts none. Cloud Run's front end is one. Only logs and request URLs use them.",
    ),
    "LROBRIDGE_PUSH_SERVICE_ACCOUNT": (
        "",
        "Service account email that push tokens must carry (required with oidc).",
    ),
    "LROBRIDGE_PUSH_CERTS_URL": (
        "https://www.googleapis.com/oauth2/v1/certs",
        "Where the public keys that sign push tokens are fetched.",
    ),
    "LROBRIDGE_PAYLOAD_FORMAT": ("binary", "Message data: `binary` protobuf or `json`."),
    "LROBRIDGE_GRPC_PORT": (
        "",
        "gRPC port (WatchService, Operations); off when unset.",
    ),
    "LROBRIDGE_CREDENTIAL_HOSTS": (
        "*.googleapis.com",
        "Hosts (`*.example.com` patterns, comma-separated) that grpcs:// and https:// sources may "
        "name: the bridge sends them its Google credentials; `*` trusts every host.",
    ),
    "LROBRIDGE_WEBHOOK_ALLOW_NETWORKS": (
        "",
        "Comma-separated CIDRs that webhook targets may use besides public addresses.",
    ),
    "LROBRIDGE_API_AUTH": (
        "key",
        "How /v1 authenticates callers: `key` (API key or allowed Google ID token) or `none`.",
    ),
    "LROBRIDGE_API_KEYS": ("", "Comma-separated API keys accepted as `Authorization: Bearer KEY`."),
    "LROBRIDGE_PAGE_TOKEN_KEY": (
        "",
        "Secret (at least 16 characters) that page tokens are signed with; every instance "
        "serving /v1 and gRPC lists must share it. Empty: a random key per process, so a next "
        "page must be asked of the process that served the first (one process, e.g. `lrobridge "
        "dev`, is fine; with several workers or instances set it).",
    ),
    "LROBRIDGE_PAGE_TOKEN_LIFETIME": (
        "1h",
        "How long a page token is honoured (1m-7d); an expired one is refused with "
        "INVALID_ARGUMENT and the listing starts again from the first page.",
    ),
    "LROBRIDGE_WATCHER_CONCURRENCY": (
        "64",
        "Polls the watcher runs at once per source besides its held long polls (a source that "
        "hangs holds up no other); also each source's Get/List calls at once.",
    ),
    "LROBRIDGE_LONG_POLL_SLOTS": (
        "5000",
        "WaitOperation long polls held open at once per source; other due watches use Get. "
        "Each held poll costs the watcher about 30 KiB (measured, grpc.aio); they run on "
        "long-poll channels of their own, at most 90 per connection. Each is renewed every "
        "LROBRIDGE_LONG_POLL_TIMEOUT: mind the API's request quota.",
    ),
    "LROBRIDGE_LONG_POLL_TIMEOUT": ("30s", "Longest single WaitOperation call (1s-10m)."),
    "LROBRIDGE_WATCHER_LEASE": (
        "10m",
        "How long the watcher holds the watches it claimed before it renews them in bulk (1m-1h): "
        "the schedule lives in its memory meanwhile. A watcher that dies without stopping hands "
        "its watches on after at most this long (on SQLite, a watcher on the same machine takes "
        "them back within 30 s). Longer means fewer store writes (Firestore: see "
        "docs/architecture.md).",
    ),
    "LROBRIDGE_RPC_TIMEOUT": (
        "30s",
        "Deadline of one GetOperation / REST GET to a source (at most 10m).",
    ),
    "LROBRIDGE_WAIT_MAX": (
        "60s",
        "Longest WaitOperation the facade holds, whatever timeout the caller asks for (1s-1h).",
    ),
    "LROBRIDGE_PROGRESS_INTERVAL": (
        "5s",
        "Least time between two progress events of one operation (watches and producers that "
        "ask for progress).",
    ),
    "LROBRIDGE_LOG_FORMAT": ("text", "`text` for terminals, `json` for Cloud Logging."),
    "LROBRIDGE_LOG_LEVEL": ("INFO", "Python logging level name."),
    "LROBRIDGE_URL": ("", "Base URL of a running bridge, used by CLI commands that call its API."),
    "LROBRIDGE_API_KEY": ("", "API key the CLI sends to the bridge (`--api-key` wins)."),
    "LROBRIDGE_WATCH_MODE": (
        "poller",
        "`poller` (the store and the in-process watcher), `pubsub` (each watch is a message on "
        "the watch topic; its push subscription's retry policy spaces the polls) or `tasks` "
        "(each watch is stored and its next poll is a named Cloud Task at the exact time).",
    ),
    "LROBRIDGE_WATCH_TOPIC": ("lro-watch", "Topic id of watch messages (pubsub watch mode)."),
    "LROBRIDGE_WATCH_SUBSCRIPTION": (
        "lro-watch-push",
        "Push subscription id to /pubsub/watch that `lrobridge pubsub init` creates.",
    ),
    "LROBRIDGE_WATCH_MIN_BACKOFF": (
        "10s",
        "Watch subscription retry policy: minimum backoff (1s-600s); also bounds delivery counts.",
    ),
    "LROBRIDGE_WATCH_MAX_BACKOFF": (
        "600s",
        "Watch subscription retry policy: maximum backoff (at least the minimum, at most 600s).",
    ),
    "LROBRIDGE_WATCH_MAX_DELIVERIES": (
        "100",
        "Watch subscription dead-letter max delivery attempts (5-100); republished before it.",
    ),
    # Cloud Tasks (LROBRIDGE_WATCH_MODE=tasks, webhook retries; lrobridge/watching/tasks_mode.py).
    "LROBRIDGE_TASKS_LOCATION": ("", "Region of the Cloud Tasks queues (e.g. europe-west1)."),
    "LROBRIDGE_TASKS_QUEUE": ("lro-watch", "Queue id of watch tasks (tasks watch mode)."),
    "LROBRIDGE_TASKS_SOURCE_QUEUES": (
        "",
        "Comma-separated `host=queue` pairs: watches of a source on that host use that queue "
        "(its own dispatch rate limit); other sources use LROBRIDGE_TASKS_QUEUE.",
    ),
    "LROBRIDGE_TASKS_WEBHOOK_QUEUE": (
        "",
        "Queue id of webhook retry tasks; empty: retries wait for POST /v1/deliveries:drain.",
    ),
    "LROBRIDGE_TASKS_URL": (
        "",
        "Base URL of this service that tasks call (POST /tasks/watch, /tasks/webhook).",
    ),
    "LROBRIDGE_TASKS_SERVICE_ACCOUNT": (
        "",
        "Service account whose OIDC token tasks carry; the task routes accept only its tokens.",
    ),
    "LROBRIDGE_TASKS_AUDIENCE": (
        "",
        "`aud` of task tokens (set on each task and required by the routes); empty: "
        "LROBRIDGE_TASKS_URL.",
    ),
    "LROBRIDGE_TASKS_EMULATOR_HOST": (
        "",
        "host:port of a Cloud Tasks emulator (plaintext gRPC, no credentials).",
    ),
    "LROBRIDGE_TASKS_SWEEP_AFTER": (
        "15m",
        "A watch overdue by this much lost its task; the scheduled drain enqueues it again.",
    ),
    # Google ID tokens on /v1 and webhooks (lrobridge/webhooks, README "Webhooks").
    "LROBRIDGE_API_SERVICE_ACCOUNTS": (
        "",
        "Comma-separated service accounts whose Google ID tokens /v1 accepts (Cloud Scheduler).",
    ),
    "LROBRIDGE_API_AUDIENCE": (
        "",
        "Expected `aud` of Google ID tokens on /v1; empty means LROBRIDGE_PUBLIC_URL or a URL "
        "under it. With LROBRIDGE_API_SERVICE_ACCOUNTS and neither set, the bridge won't start.",
    ),
    "LROBRIDGE_WEBHOOK_TIMEOUT": ("15s", "Timeout of one webhook request (connect + response)."),
    "LROBRIDGE_WEBHOOK_CONCURRENCY": ("16", "Webhook requests in flight at once per process."),
    "LROBRIDGE_WEBHOOK_DELIVERY": (
        "auto",
        "`background` worker thread, or `request` (push + drain only); auto: request on Cloud Run.",
    ),
    "K_SERVICE": ("", "Set by Cloud Run; makes LROBRIDGE_WEBHOOK_DELIVERY=auto mean `request`."),
    "LROBRIDGE_METRICS": (
        "",
        "`prometheus`: serve the metrics at `GET /metrics` (Prometheus text format); empty: "
        "no endpoint.",
    ),
    "LROBRIDGE_METRICS_AUTH": (
        "api",
        "Who may read `/metrics`: `api` (the same credentials as /v1) or `none` (anyone who "
        "can reach the port, e.g. a scraper inside a private network).",
    ),
    "OTEL_SDK_DISABLED": ("", "`true`: no traces and no metrics, whatever else is set."),
    "OTEL_EXPORTER_OTLP_ENDPOINT": (
        "",
        "OTLP collector base URL (e.g. `http://localhost:4318`): turns traces and metrics on, "
        "exported over OTLP/HTTP. The other standard OTEL_EXPORTER_OTLP_* variables apply.",
    ),
    "OTEL_TRACES_EXPORTER": (
        "",
        "Trace exporters, comma-separated: `otlp`, `gcp` (Cloud Trace), `console`; empty or "
        "`none`: no traces unless OTEL_EXPORTER_OTLP_ENDPOINT is set.",
    ),
    "OTEL_METRICS_EXPORTER": (
        "",
        "Metric exporters: `otlp`, `gcp` (Cloud Monitoring), `console`, `prometheus`; empty or "
        "`none`: no metrics unless OTEL_EXPORTER_OTLP_ENDPOINT or LROBRIDGE_METRICS is set.",
    ),
    "OTEL_SERVICE_NAME": (
        "",
        "service.name of the spans and metrics; default K_SERVICE or `lrobridge`.",
    ),
    "LROBRIDGE_QUARANTINE_MAX_AGE": (
        "7d",
        "Quarantined messages older than this are dropped (1m-365d).",
    ),
    "LROBRIDGE_QUARANTINE_MAX_BYTES": (
        "64MiB",
        "Most body bytes the quarantine keeps (e.g. 64MiB, 1GiB; at least 1MiB); the oldest "
        "entries are dropped first, the newest is always kept.",
    ),
}

# The largest request body the HTTP server reads and the app accepts: Pub/Sub messages are at
# most 10 MB, and base64 in a JSON envelope makes that about 13.4 MB. One definition: the server
# (lrobridge.server) and Flask's MAX_CONTENT_LENGTH both use it.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# The quarantine's bounds by default (LROBRIDGE_QUARANTINE_MAX_AGE / _MAX_BYTES).
QUARANTINE_MAX_AGE = 7 * 86400.0
QUARANTINE_MAX_BYTES = 64 * 1024 * 1024

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Seconds in ``1h``, ``30m``, ``1.5s``, ``500ms``, ``1h30m`` or a bare number of seconds."""
    value = text.strip().lower()
    if not value:
        raise ConfigError(f"{what}: empty duration; use e.g. 30s, 5m, 1h")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_RE.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value):
            raise ConfigError(
                f"{what}: {text!r} is not a duration; use e.g. 30s, 5m, 1h, 1h30m, 500ms"
            ) from None
    if not 0 <= seconds < float("inf"):  # also refuses NaN
        raise ConfigError(f"{what}: {text!r} must be a finite, non-negative duration")
    return seconds


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of the bridge, read once from the environment (``ENVIRONMENT`` documents each
    variable) by :meth:`from_env`.

    Built in code (``Settings()``), the store is a private in-memory one unless ``store_url``
    says otherwise: only :meth:`from_env` picks the per-user default file (see
    :func:`default_store_url`).
    """

    port: int = 8080
    project: str = ""
    emulator_host: str = ""
    topic: str = "lro-completed"
    subscription: str = "lro-completed-push"
    store_url: str = "sqlite://:memory:"
    push_auth: PushAuth = "oidc"
    push_audience: str = ""
    public_url: str = ""
    trusted_proxies: int = 0
    push_service_account: str = ""
    push_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    payload_format: PayloadFormat = "binary"
    grpc_port: int | None = None
    credential_hosts: tuple[str, ...] = ("*.googleapis.com",)
    webhook_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    api_auth: Literal["key", "none"] = "key"
    api_keys: frozenset[str] = frozenset()
    page_token_key: str = dataclasses.field(default="", repr=False)
    page_token_lifetime: float = 3600.0
    watcher_concurrency: int = 64
    long_poll_slots: int = 5000
    long_poll_timeout: float = 30.0
    watcher_lease: float = 600.0
    rpc_timeout: float = 30.0
    progress_interval: float = 5.0
    wait_max: float = 60.0
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    bridge_url: str = ""
    api_key: str = ""
    watch_mode: WatchMode = "poller"
    watch_topic: str = "lro-watch"
    watch_subscription: str = "lro-watch-push"
    watch_min_backoff: float = 10.0
    watch_max_backoff: float = 600.0
    watch_max_deliveries: int = 100
    api_service_accounts: frozenset[str] = frozenset()
    api_audience: str = ""
    webhook_timeout: float = 15.0
    webhook_concurrency: int = 16
    webhook_delivery: WebhookDelivery = "auto"
    cloud_run_service: str = ""
    metrics: Literal["", "prometheus"] = ""
    metrics_auth: Literal["api", "none"] = "api"
    quarantine_max_age: float = QUARANTINE_MAX_AGE
    quarantine_max_bytes: int = QUARANTINE_MAX_BYTES
    tasks_location: str = ""
    tasks_queue: str = "lro-watch"
    tasks_source_queues: tuple[tuple[str, str], ...] = ()
    tasks_webhook_queue: str = ""
    tasks_url: str = ""
    tasks_service_account: str = ""
    tasks_audience: str = ""
    tasks_emulator_host: str = ""
    tasks_sweep_after: float = 900.0

    @property
    def tasks_token_audience(self) -> str:
        """The audience of task tokens: configured, never taken from a request."""
        return self.tasks_audience or self.tasks_url

    def queue_path(self, queue: str) -> str:
        """Full name of a Cloud Tasks queue of this project and location."""
        if not self.project or not self.tasks_location:
            raise ConfigError(
                "Cloud Tasks needs GOOGLE_CLOUD_PROJECT (or LROBRIDGE_PROJECT) and "
                "LROBRIDGE_TASKS_LOCATION"
            )
        return f"projects/{self.project}/locations/{self.tasks_location}/queues/{queue}"

    def check_tasks(self) -> None:
        """Fail early when Cloud Tasks is used but cannot be reached or cannot call back."""
        self.queue_path(self.tasks_queue)
        if not self.tasks_url:
            raise ConfigError(
                "Cloud Tasks needs LROBRIDGE_TASKS_URL (this service's base URL, which tasks call)"
            )
        if self.push_auth != "none" and not self.tasks_service_account:
            raise ConfigError(
                f"LROBRIDGE_PUSH_AUTH={self.push_auth} needs LROBRIDGE_TASKS_SERVICE_ACCOUNT (the "
                "service account whose OIDC token each task carries)"
            )

    def require_project(self, what: str = "publishing") -> str:
        """The project; ConfigError (one line naming the variables) when none is set, for
        ``what`` publishes to Pub/Sub: a process that publishes refuses to start without one."""
        if not self.project:
            raise ConfigError(
                f"no Google Cloud project: {what} publishes to Pub/Sub; set GOOGLE_CLOUD_PROJECT "
                "or LROBRIDGE_PROJECT"
            )
        return self.project

    @property
    def topic_path(self) -> str:
        return f"projects/{self.require_project()}/topics/{self.topic}"

    @property
    def watch_topic_path(self) -> str:
        return self.topic_path.rsplit("/", 1)[0] + f"/{self.watch_topic}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env

        def get(name: str) -> str:
            return source.get(name, ENVIRONMENT[name][0]).strip()

        return cls(
            port=_port(get("PORT"), "PORT"),
            project=get("LROBRIDGE_PROJECT") or get("GOOGLE_CLOUD_PROJECT"),
            emulator_host=get("PUBSUB_EMULATOR_HOST"),
            topic=_resource_id(get("LROBRIDGE_TOPIC"), "LROBRIDGE_TOPIC"),
            subscription=_resource_id(get("LROBRIDGE_SUBSCRIPTION"), "LROBRIDGE_SUBSCRIPTION"),
            store_url=_store_url(get("LROBRIDGE_STORE") or default_store_url(source)),
            push_auth=cast(
                PushAuth,
                _choice(
                    get("LROBRIDGE_PUSH_AUTH"), "LROBRIDGE_PUSH_AUTH", ("oidc", "cloudrun", "none")
                ),
            ),
            push_audience=get("LROBRIDGE_PUSH_AUDIENCE"),
            public_url=_public_url(get("LROBRIDGE_PUBLIC_URL")),
            trusted_proxies=_non_negative_int(
                get("LROBRIDGE_TRUSTED_PROXIES"), "LROBRIDGE_TRUSTED_PROXIES"
            ),
            push_service_account=get("LROBRIDGE_PUSH_SERVICE_ACCOUNT"),
            push_certs_url=get("LROBRIDGE_PUSH_CERTS_URL"),
            payload_format=cast(
                PayloadFormat,
                _choice(
                    get("LROBRIDGE_PAYLOAD_FORMAT"), "LROBRIDGE_PAYLOAD_FORMAT", ("binary", "json")
                ),
            ),
            grpc_port=_port(get("LROBRIDGE_GRPC_PORT"), "LROBRIDGE_GRPC_PORT")
            if get("LROBRIDGE_GRPC_PORT")
            else None,
            credential_hosts=_host_patterns(get("LROBRIDGE_CREDENTIAL_HOSTS")),
            webhook_allow_networks=parse_networks(
                get("LROBRIDGE_WEBHOOK_ALLOW_NETWORKS"), "LROBRIDGE_WEBHOOK_ALLOW_NETWORKS"
            ),
            api_auth=cast(
                ApiAuth, _choice(get("LROBRIDGE_API_AUTH"), "LROBRIDGE_API_AUTH", ("key", "none"))
            ),
            api_keys=frozenset(
                _header_safe(k.strip(), "LROBRIDGE_API_KEYS")
                for k in get("LROBRIDGE_API_KEYS").split(",")
                if k.strip()
            ),
            page_token_key=_page_token_key(get("LROBRIDGE_PAGE_TOKEN_KEY")),
            page_token_lifetime=_bounded_duration(
                get("LROBRIDGE_PAGE_TOKEN_LIFETIME"),
                "LROBRIDGE_PAGE_TOKEN_LIFETIME",
                60.0,
                604800.0,
            ),
            watcher_concurrency=_positive_int(
                get("LROBRIDGE_WATCHER_CONCURRENCY"), "LROBRIDGE_WATCHER_CONCURRENCY"
            ),
            long_poll_slots=_non_negative_int(
                get("LROBRIDGE_LONG_POLL_SLOTS"), "LROBRIDGE_LONG_POLL_SLOTS"
            ),
            long_poll_timeout=_bounded_duration(
                get("LROBRIDGE_LONG_POLL_TIMEOUT"), "LROBRIDGE_LONG_POLL_TIMEOUT", 1.0, 600.0
            ),
            watcher_lease=_bounded_duration(
                get("LROBRIDGE_WATCHER_LEASE"), "LROBRIDGE_WATCHER_LEASE", 60.0, 3600.0
            ),
            rpc_timeout=_bounded_duration(
                get("LROBRIDGE_RPC_TIMEOUT"), "LROBRIDGE_RPC_TIMEOUT", 0.1, 600.0
            ),
            wait_max=_bounded_duration(
                get("LROBRIDGE_WAIT_MAX"), "LROBRIDGE_WAIT_MAX", 1.0, 3600.0
            ),
            progress_interval=_bounded_duration(
                get("LROBRIDGE_PROGRESS_INTERVAL"), "LROBRIDGE_PROGRESS_INTERVAL", 0.0, 86400.0
            ),
            log_format=cast(
                LogFormat,
                _choice(get("LROBRIDGE_LOG_FORMAT"), "LROBRIDGE_LOG_FORMAT", ("text", "json")),
            ),
            log_level=_log_level(get("LROBRIDGE_LOG_LEVEL")),
            bridge_url=get("LROBRIDGE_URL").rstrip("/"),
            api_key=_header_safe(get("LROBRIDGE_API_KEY"), "LROBRIDGE_API_KEY"),
            **_watch_settings(get),
            api_service_accounts=_emails(
                get("LROBRIDGE_API_SERVICE_ACCOUNTS"), "LROBRIDGE_API_SERVICE_ACCOUNTS"
            ),
            api_audience=get("LROBRIDGE_API_AUDIENCE"),
            webhook_timeout=_bounded_duration(
                get("LROBRIDGE_WEBHOOK_TIMEOUT"), "LROBRIDGE_WEBHOOK_TIMEOUT", 0.1, 600.0
            ),
            webhook_concurrency=_positive_int(
                get("LROBRIDGE_WEBHOOK_CONCURRENCY"), "LROBRIDGE_WEBHOOK_CONCURRENCY"
            ),
            webhook_delivery=cast(
                WebhookDelivery,
                _choice(
                    get("LROBRIDGE_WEBHOOK_DELIVERY"),
                    "LROBRIDGE_WEBHOOK_DELIVERY",
                    ("auto", "background", "request"),
                ),
            ),
            cloud_run_service=get("K_SERVICE"),
            metrics=cast(
                Literal["", "prometheus"],
                _choice(get("LROBRIDGE_METRICS"), "LROBRIDGE_METRICS", ("", "prometheus")),
            ),
            metrics_auth=cast(
                Literal["api", "none"],
                _choice(get("LROBRIDGE_METRICS_AUTH"), "LROBRIDGE_METRICS_AUTH", ("api", "none")),
            ),
            quarantine_max_age=_bounded_duration(
                get("LROBRIDGE_QUARANTINE_MAX_AGE"),
                "LROBRIDGE_QUARANTINE_MAX_AGE",
                60.0,
                365 * 86400.0,
            ),
            quarantine_max_bytes=_byte_size(
                get("LROBRIDGE_QUARANTINE_MAX_BYTES"), "LROBRIDGE_QUARANTINE_MAX_BYTES", 1 << 20
            ),
            tasks_location=get("LROBRIDGE_TASKS_LOCATION"),
            tasks_queue=_queue_id(get("LROBRIDGE_TASKS_QUEUE"), "LROBRIDGE_TASKS_QUEUE"),
            tasks_source_queues=_source_queues(get("LROBRIDGE_TASKS_SOURCE_QUEUES")),
            tasks_webhook_queue=_queue_id(
                get("LROBRIDGE_TASKS_WEBHOOK_QUEUE"), "LROBRIDGE_TASKS_WEBHOOK_QUEUE"
            )
            if get("LROBRIDGE_TASKS_WEBHOOK_QUEUE")
            else "",
            tasks_url=get("LROBRIDGE_TASKS_URL").rstrip("/"),
            tasks_service_account=get("LROBRIDGE_TASKS_SERVICE_ACCOUNT"),
            tasks_audience=get("LROBRIDGE_TASKS_AUDIENCE"),
            tasks_emulator_host=get("LROBRIDGE_TASKS_EMULATOR_HOST"),
            tasks_sweep_after=_bounded_duration(
                get("LROBRIDGE_TASKS_SWEEP_AFTER"), "LROBRIDGE_TASKS_SWEEP_AFTER", 60.0, 86400.0
            ),
        )

    def check_push_auth(self) -> None:
        """Fail early when OIDC push auth is on but cannot possibly accept a token."""
        if self.push_auth != "none" and not self.push_service_account:
            raise ConfigError(
                f"LROBRIDGE_PUSH_AUTH={self.push_auth} needs LROBRIDGE_PUSH_SERVICE_ACCOUNT (the "
                "email of the service account the push subscription signs with); set "
                "LROBRIDGE_PUSH_AUTH=none only for local development"
            )
        if self.push_auth == "cloudrun" and not self.cloud_run_service:
            raise ConfigError(
                "LROBRIDGE_PUSH_AUTH=cloudrun trusts that Cloud Run checked each token's "
                "signature, but K_SERVICE is not set: this is not running on Cloud Run; use "
                "oidc here"
            )
        if self.push_auth != "none" and not self.push_audiences:
            raise ConfigError(
                f"LROBRIDGE_PUSH_AUTH={self.push_auth} needs the audience push tokens must carry, "
                "from configuration (never from the request's Host): set LROBRIDGE_PUSH_AUDIENCE "
                "(the push subscription's OIDC audience) or LROBRIDGE_PUBLIC_URL (the bridge's "
                "public base URL, e.g. https://SERVICE-HASH.REGION.run.app; the audience is then "
                "LROBRIDGE_PUBLIC_URL/pubsub/push)"
            )

    @property
    def push_audiences(self) -> frozenset[str]:
        """The audiences a push token may carry: LROBRIDGE_PUSH_AUDIENCE, else the push routes
        under LROBRIDGE_PUBLIC_URL (Pub/Sub's default audience is the push endpoint's URL)."""
        if self.push_audience:
            return frozenset({self.push_audience})
        if self.public_url:
            return frozenset({f"{self.public_url}/pubsub/push", f"{self.public_url}/pubsub/watch"})
        return frozenset()

    def check_api_auth(self) -> None:
        """Fail early when /v1 accepts ID tokens but no trusted audience is configured."""
        if self.api_service_accounts and not (self.api_audience or self.public_url):
            raise ConfigError(
                "LROBRIDGE_API_SERVICE_ACCOUNTS needs the audience their ID tokens must carry, "
                "from configuration (never from the request's Host): set LROBRIDGE_API_AUDIENCE "
                "or LROBRIDGE_PUBLIC_URL (the bridge's public base URL; tokens for it or any URL "
                "under it are accepted)"
            )


def _watch_settings(get: Callable[[str], str]) -> dict[str, Any]:
    """The serverless watch mode's settings (see lrobridge.watching.pubsub_mode)."""
    min_backoff = parse_duration(
        get("LROBRIDGE_WATCH_MIN_BACKOFF"), what="LROBRIDGE_WATCH_MIN_BACKOFF"
    )
    max_backoff = parse_duration(
        get("LROBRIDGE_WATCH_MAX_BACKOFF"), what="LROBRIDGE_WATCH_MAX_BACKOFF"
    )
    # At least 1 s: the delivery count is bounded by age / minimum backoff, and a zero backoff
    # would poll a pending operation as fast as Pub/Sub can push.
    if not 1.0 <= min_backoff <= 600.0:
        raise ConfigError(
            f"LROBRIDGE_WATCH_MIN_BACKOFF={get('LROBRIDGE_WATCH_MIN_BACKOFF')!r} must be 1s-600s"
        )
    if not min_backoff <= max_backoff <= 600.0:
        raise ConfigError(
            f"LROBRIDGE_WATCH_MAX_BACKOFF={get('LROBRIDGE_WATCH_MAX_BACKOFF')!r} must be between "
            f"LROBRIDGE_WATCH_MIN_BACKOFF ({min_backoff:g}s) and 600s"
        )
    max_deliveries = _int(get("LROBRIDGE_WATCH_MAX_DELIVERIES"), "LROBRIDGE_WATCH_MAX_DELIVERIES")
    if not 5 <= max_deliveries <= 100:
        raise ConfigError(
            f"LROBRIDGE_WATCH_MAX_DELIVERIES={max_deliveries} is outside 5-100 (what Pub/Sub "
            "accepts as a dead-letter policy's max delivery attempts)"
        )
    return {
        "watch_mode": _choice(
            get("LROBRIDGE_WATCH_MODE"), "LROBRIDGE_WATCH_MODE", ("poller", "pubsub", "tasks")
        ),
        "watch_topic": _resource_id(get("LROBRIDGE_WATCH_TOPIC"), "LROBRIDGE_WATCH_TOPIC"),
        "watch_subscription": _resource_id(
            get("LROBRIDGE_WATCH_SUBSCRIPTION"), "LROBRIDGE_WATCH_SUBSCRIPTION"
        ),
        "watch_min_backoff": min_backoff,
        "watch_max_backoff": max_backoff,
        "watch_max_deliveries": max_deliveries,
    }


_BYTE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_BYTE_SIZE_RE = re.compile(r"(\d+)\s*([a-z]*)")


def _byte_size(value: str, name: str, low: int) -> int:
    """A size in bytes: ``67108864``, ``64MiB``, ``512KiB``, ``1GiB``; at least ``low``."""
    match = _BYTE_SIZE_RE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _BYTE_UNITS:
        raise ConfigError(f"{name}={value!r} is not a size; use e.g. 64MiB, 512KiB, 1GiB")
    size = int(match.group(1)) * _BYTE_UNITS[match.group(2)]
    if size < low:
        raise ConfigError(f"{name}={value!r} must be at least {low} bytes")
    return size


def _public_url(value: str) -> str:
    """LROBRIDGE_PUBLIC_URL: ``http(s)://host[:port][/path]``, no query or fragment, no final /."""
    if not value:
        return ""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"LROBRIDGE_PUBLIC_URL={value!r} is not a base URL such as "
            "https://SERVICE-HASH.REGION.run.app (http or https, a host, no query or fragment)"
        )
    return value.rstrip("/")


_QUEUE_ID_RE = re.compile(r"[A-Za-z0-9-]{1,100}")


def _queue_id(value: str, name: str) -> str:
    if not _QUEUE_ID_RE.fullmatch(value):
        raise ConfigError(
            f"{name}={value!r} is not a Cloud Tasks queue id (letters, digits and hyphens, at "
            "most 100)"
        )
    return value


def _source_queues(value: str) -> tuple[tuple[str, str], ...]:
    """``host=queue,host2=queue2`` (LROBRIDGE_TASKS_SOURCE_QUEUES) as (host, queue) pairs."""
    pairs: list[tuple[str, str]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, queue = item.partition("=")
        host, queue = host.strip().lower(), queue.strip()
        if not sep or not host or not _QUEUE_ID_RE.fullmatch(queue):
            raise ConfigError(
                f"LROBRIDGE_TASKS_SOURCE_QUEUES: {item!r} is not host=queue (a queue id is "
                "letters, digits and hyphens, at most 100)"
            )
        pairs.append((host, queue))
    return tuple(pairs)


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    lowered = value.lower()
    if lowered not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
    return lowered


def _port(value: str, name: str) -> int:
    number = _int(value, name)
    if not 0 <= number <= 65535:
        raise ConfigError(f"{name}={value!r} is not a port number (0-65535)")
    return number


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _positive_int(value: str, name: str) -> int:
    number = _int(value, name)
    if number < 1:
        raise ConfigError(f"{name}={value!r} must be at least 1")
    return number


def _non_negative_int(value: str, name: str) -> int:
    number = _int(value, name)
    if number < 0:
        raise ConfigError(f"{name}={value!r} must not be negative")
    return number


def _page_token_key(value: str) -> str:
    if value and len(value) < 16:
        raise ConfigError(
            f"LROBRIDGE_PAGE_TOKEN_KEY has {len(value)} characters; use a random secret of at "
            "least 16 (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return value


def _header_safe(value: str, name: str) -> str:
    """API keys travel in an HTTP header: printable ASCII without spaces only."""
    if value and not all("!" <= ch <= "~" for ch in value):
        raise ConfigError(f"{name}: an API key must be printable ASCII without spaces")
    return value


def _bounded_duration(value: str, name: str, low: float, high: float) -> float:
    seconds = parse_duration(value, what=name)
    if not low <= seconds <= high:
        raise ConfigError(f"{name}={value!r} must be between {low:g}s and {high:g}s")
    return seconds


_RESOURCE_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


def _resource_id(value: str, name: str) -> str:
    if not _RESOURCE_ID_RE.fullmatch(value) or value.lower().startswith("goog"):
        raise ConfigError(
            f"{name}={value!r} is not a Pub/Sub resource id (3-255 characters, starting with a "
            "letter; letters, digits, - _ . ~ + %; not starting with goog)"
        )
    return value


DEFAULT_STORE_FILE = "lrobridge/lrobridge.db"


def default_store_url(env: Mapping[str, str]) -> str:
    """The store of a process given no LROBRIDGE_STORE: ``$XDG_STATE_HOME/lrobridge/lrobridge.db``
    (``~/.local/state`` when XDG_STATE_HOME is unset or relative, as the XDG spec says).

    Per user, not per folder: a script calling ``Bridge()``, ``lrobridge watcher`` and
    ``lrobridge dev`` started from different folders share one store, so a watch registered by
    one is polled by the other (a store in the working folder silently split them).
    """
    base = env.get("XDG_STATE_HOME", "").strip()
    if not os.path.isabs(base):
        home = env.get("HOME", "").strip() or os.path.expanduser("~")
        base = os.path.join(home, ".local", "state")
    return f"sqlite:///{os.path.join(base, DEFAULT_STORE_FILE)}"


def _store_url(value: str) -> str:
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        # Resolved once: a process that changes folder later keeps the same file.
        return "sqlite:///" + os.path.abspath(value.removeprefix("sqlite:///"))
    if value == "sqlite://:memory:":
        return value
    if value.startswith("firestore://"):
        firestore_database(value)  # raises ConfigError naming LROBRIDGE_STORE
        return value
    raise ConfigError(
        f"LROBRIDGE_STORE={value!r} is not a store URL; use sqlite:///path/to/file.db "
        "(a relative path is relative to the working folder at start) or firestore://[DATABASE]"
    )


DEFAULT_FIRESTORE_DATABASE = "(default)"
# Firestore's rule for database ids: 4-63 of a-z 0-9 -, a letter first, a letter or digit last,
# not shaped like a UUID.
_FIRESTORE_DATABASE_RE = re.compile(r"[a-z][a-z0-9-]{2,61}[a-z0-9]")
_UUID_RE = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")


def firestore_database(store_url: str) -> str:
    """The database id of a ``firestore://[DATABASE]`` store URL (``(default)`` when empty)."""
    database = store_url.removeprefix("firestore://")
    if database in ("", DEFAULT_FIRESTORE_DATABASE):
        return DEFAULT_FIRESTORE_DATABASE
    if not _FIRESTORE_DATABASE_RE.fullmatch(database) or _UUID_RE.fullmatch(database):
        raise ConfigError(
            f"LROBRIDGE_STORE={store_url!r}: {database!r} is not a Firestore database id; use "
            "firestore:// (the default database) or firestore://DATABASE with 4-63 lowercase "
            "letters, digits or hyphens, starting with a letter and ending with a letter or digit"
        )
    return database


def _log_level(value: str) -> str:
    upper = value.upper()
    if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(
            f"LROBRIDGE_LOG_LEVEL={value!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return upper


def _emails(value: str, name: str) -> frozenset[str]:
    emails = frozenset(e.strip().lower() for e in value.split(",") if e.strip())
    for email in emails:
        if "@" not in email or any(c.isspace() for c in email):
            raise ConfigError(f"{name}: {email!r} is not a service account email")
    return emails


_HOST_PATTERN_RE = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9.\-]*[a-z0-9])?)")


def _host_patterns(value: str) -> tuple[str, ...]:
    patterns = tuple(p.strip().lower() for p in value.split(",") if p.strip())
    for pattern in patterns:
        if not _HOST_PATTERN_RE.fullmatch(pattern):
            raise ConfigError(
                f"LROBRIDGE_CREDENTIAL_HOSTS: {pattern!r} is not a host name, *.domain or *"
            )
    return patterns


def parse_networks(
    value: str, name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not a CIDR such as 10.0.0.0/8") from None
    return tuple(networks)
