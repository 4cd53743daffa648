"""The ``lrobridge`` command line: dev, serve, watcher, watch, watches, webhooks, pubsub init.

Every command answers bad input and failures with one line ``lrobridge: error: ...`` and exit
status 2 (1 for a failure of the work itself), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from lrobridge.cli.common import (
    api_endpoint,
    call,
    load_bridge,
    print_json,
    verbs_of,
    wait_for_signal,
)
from lrobridge.cli.output import Column, add_format_flag, print_listing
from lrobridge.config import Settings, parse_duration
from lrobridge.core.names import is_digits, validate_operation_name, validate_resource_id
from lrobridge.core.source_url import parse_source_url
from lrobridge.errors import BridgeError, ConfigError, InvalidArgument
from lrobridge.logs import configure_logging

log = logging.getLogger("lrobridge")
GC_TICK_SECONDS = 2.0  # how often the watcher command's main thread paces the collector


# -- commands ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from flask import Flask

    from lrobridge.bridge import BRIDGE_EXTENSION
    from lrobridge.server import Server, ServerOptions

    target = load_bridge(args.app, allow_app=True)
    bridge = target.extensions[BRIDGE_EXTENSION] if isinstance(target, Flask) else target
    if (args.watcher and bridge.settings.watch_mode == "poller") or (
        bridge.settings.watch_mode == "pubsub"
    ):
        from lrobridge.cli.preflight import check_publishing

        check_publishing(bridge.settings, "lrobridge serve")
    app = target if isinstance(target, Flask) else bridge.create_app()
    options = ServerOptions(
        host=args.host,
        port=args.port if args.port is not None else bridge.settings.port,
        threads=args.threads,
        connection_limit=args.connection_limit,
        channel_timeout=args.channel_timeout,
        graceful_timeout=args.graceful_timeout,
    )
    server = Server(bridge, app, options, run_watcher=args.watcher)

    def handler(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    server.serve()
    return 0


def cmd_watcher(args: argparse.Namespace) -> int:
    bridge = load_bridge(args.app)
    if bridge.settings.watch_mode == "pubsub":
        raise ConfigError(
            "LROBRIDGE_WATCH_MODE=pubsub has no watcher: POST /pubsub/watch polls each watch "
            "when its message is delivered (see `lrobridge pubsub init`)"
        )
    if bridge.settings.watch_mode == "tasks":
        raise ConfigError(
            "LROBRIDGE_WATCH_MODE=tasks has no watcher: POST /tasks/watch polls each watch when "
            "Cloud Tasks delivers its task (docs/deploy.md)"
        )
    from lrobridge.cli.preflight import check_publishing
    from lrobridge.watching.gc_pacing import GcPacing

    check_publishing(bridge.settings, "lrobridge watcher")
    watcher = bridge.create_watcher()
    stop = wait_for_signal()
    if bridge.settings.grpc_port is not None:
        port = bridge.start_grpc()
        log.info("Operations and WatchService over gRPC on port %d", port)
    thread = threading.Thread(target=watcher.run, name="lrobridge-watcher", daemon=True)
    thread.start()
    pacing = GcPacing()  # this process is the watcher's: its collector policy is ours to set
    while not stop.wait(GC_TICK_SECONDS):
        if not thread.is_alive():
            break
        pacing.tick()
    died = not thread.is_alive()
    if died:
        log.error("the watcher stopped on its own (see the errors above): exiting")
    else:
        log.info("stopping watcher")
    watcher.stop()
    thread.join(timeout=60)
    pacing.close()
    bridge.close()
    return 1 if died else 0


def cmd_watch(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    validate_operation_name(args.operation)  # say what is wrong before calling the bridge
    parse_source_url(args.source)
    body: dict[str, Any] = {"operation": args.operation, "source": args.source}
    if args.deadline:
        body["deadline"] = f"{parse_duration(args.deadline, what='--deadline')}s"
    base, headers = api_endpoint(settings, args)
    watch = call("POST", f"{base}/v1/watches", headers, body)
    print_json(watch)
    return 0


def cmd_watches(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    base, headers = api_endpoint(settings, args)
    if args.watches_command == "list":
        url = f"{base}/v1/watches" + (f"?state={args.state}" if args.state else "")
        print_listing(call("GET", url, headers), "watches", WATCH_COLUMNS, args.format)
    elif args.watches_command == "get":
        print_json(call("GET", f"{base}/v1/{_watch_name(args.id)}", headers))
    else:
        call("DELETE", f"{base}/v1/{_watch_name(args.id)}", headers)
        print(f"deleted {_watch_name(args.id)}")
    return 0


WATCH_COLUMNS: list[Column] = [
    ("NAME", lambda w: w.get("name")),
    ("STATE", lambda w: w.get("state")),
    ("POLLS", lambda w: w.get("polls", "0")),
    ("OPERATION", lambda w: w.get("operation")),
    ("SOURCE", lambda w: w.get("source")),
    ("LAST ERROR", lambda w: (w.get("lastError") or {}).get("message")),
]
QUARANTINE_COLUMNS: list[Column] = [
    ("ID", lambda m: m.get("id")),
    ("RECEIVED", lambda m: m.get("receiveTime")),
    ("REASON", lambda m: m.get("reason")),
    ("BYTES", lambda m: m.get("bodySize")),
]


def _watch_name(value: str) -> str:
    """``watches/{id}`` for an id given with or without its collection (checked here, so a
    value like ``../x`` can never make the URL name something else)."""
    return f"watches/{validate_resource_id(value.removeprefix('watches/'), 'watch')}"


def cmd_quarantine(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    base, headers = api_endpoint(settings, args)
    if args.quarantine_command == "get":
        print_json(call("GET", f"{base}/v1/quarantine/{args.id}", headers))
        return 0
    limit = args.limit or (10 if args.view == "FULL" else 50)
    listing = call("GET", f"{base}/v1/quarantine?pageSize={limit}&view={args.view}", headers)
    print_listing(listing, "messages", QUARANTINE_COLUMNS, args.format)
    return 0


def cmd_pubsub_init(args: argparse.Namespace) -> int:
    from lrobridge.adapters.pubsub import PubSubAdmin

    settings = Settings.from_env()
    admin = PubSubAdmin()
    topic = settings.topic_path
    print(f"topic {topic}: {admin.ensure_topic(topic)}")
    subscription = (
        f"projects/{settings.project}/subscriptions/{args.subscription or settings.subscription}"
    )
    service_account = args.service_account or settings.push_service_account or None
    if service_account is None and settings.push_auth != "none" and not settings.emulator_host:
        raise ConfigError(
            "pubsub init: a push subscription with OIDC needs --service-account (or "
            "LROBRIDGE_PUSH_SERVICE_ACCOUNT); set LROBRIDGE_PUSH_AUTH=none for local use"
        )
    result = admin.ensure_push_subscription(
        subscription,
        topic,
        args.push_endpoint,
        oidc_service_account=service_account,
        audience=args.audience or settings.push_audience or None,
    )
    print(f"subscription {subscription} -> {args.push_endpoint}: {result}")
    if settings.watch_mode == "pubsub":
        _init_watch_subscription(admin, settings, args, service_account)
    admin.close()
    return 0


def _init_watch_subscription(
    admin: Any, settings: Settings, args: argparse.Namespace, service_account: str | None
) -> None:
    """LROBRIDGE_WATCH_MODE=pubsub: the watch topic, its dead-letter topic and the push
    subscription to /pubsub/watch whose retry policy spaces the polls."""
    from urllib.parse import urlsplit, urlunsplit

    project = f"projects/{settings.project}"
    endpoint = args.watch_push_endpoint or urlunsplit(
        urlsplit(args.push_endpoint)._replace(path="/pubsub/watch", query="")
    )
    topic = settings.watch_topic_path
    dead_letter = f"{project}/topics/{args.dead_letter_topic}"
    subscription = f"{project}/subscriptions/{settings.watch_subscription}"
    print(f"topic {topic}: {admin.ensure_topic(topic)}")
    print(f"topic {dead_letter}: {admin.ensure_topic(dead_letter)}")
    result = admin.ensure_push_subscription(
        subscription,
        topic,
        endpoint,
        oidc_service_account=service_account,
        audience=args.audience or settings.push_audience or None,
        enable_message_ordering=False,
        dead_letter_topic=dead_letter,
        max_delivery_attempts=settings.watch_max_deliveries,
        min_backoff=settings.watch_min_backoff,
        max_backoff=settings.watch_max_backoff,
    )
    print(f"subscription {subscription} -> {endpoint}: {result}")
    print(
        "note: dead-lettering needs the Pub/Sub service agent to hold roles/pubsub.publisher on "
        f"{dead_letter} and roles/pubsub.subscriber on {subscription} (terraform/ grants both)"
    )


def cmd_dev(args: argparse.Namespace) -> int:
    from lrobridge.cli.dev import run_dev

    return run_dev(
        app_spec=args.app,
        port=args.port,
        emulator_port=args.emulator_port,
        serverless=args.serverless,
        tasks=args.tasks,
        tasks_port=args.tasks_port,
    )


# -- parser --------------------------------------------------------------------------------


def _port_arg(text: str) -> int:
    if not is_digits(text) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _count_arg(text: str) -> int:
    if not is_digits(text) or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 1024")
    return int(text)


def _quarantine_id(text: str) -> str:
    if not is_digits(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a quarantine id (a number)")
    return text


def _connections_arg(text: str) -> int:
    if not is_digits(text) or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 100000")
    return int(text)


def _duration_arg(text: str, low: float, high: float, bounds: str) -> float:
    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if not low <= seconds <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not between {bounds}")
    return seconds


def _seconds_arg(text: str) -> float:
    return _duration_arg(text, 1.0, 3600.0, "1s and 1h")


def _grace_arg(text: str) -> float:
    return _duration_arg(text, 0.0, 3600.0, "0s and 1h")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrobridge",
        description="Pub/Sub notifications for google.longrunning Operations.",
    )
    parser.add_argument(
        "--version", action="version", version=f"lrobridge {version()}", help="print the version"
    )
    sub = verbs_of(parser, "command", metavar="COMMAND")

    dev = sub.add_parser("dev", help="run the whole local stack (Pub/Sub emulator included)")
    dev.add_argument("--app", help="module:attribute of your Bridge (callbacks)")
    dev.add_argument(
        "--port", type=_port_arg, default=None, help="HTTP port (default $PORT or 8080)"
    )
    dev.add_argument("--emulator-port", type=_port_arg, default=8085, help="Pub/Sub emulator port")
    dev.add_argument(
        "--serverless",
        action="store_true",
        help="LROBRIDGE_WATCH_MODE=pubsub: watches are messages, polled by /pubsub/watch",
    )
    dev.add_argument(
        "--tasks",
        action="store_true",
        help="LROBRIDGE_WATCH_MODE=tasks on a local Cloud Tasks emulator: each poll is a task",
    )
    dev.add_argument("--tasks-port", type=_port_arg, default=9022, help="Cloud Tasks emulator port")
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser(
        "serve",
        help="serve the push endpoint and API (waitress: requests are read whole before a "
        "thread runs them)",
    )
    serve.add_argument(
        "--app", help="module:attribute of your Bridge, or of the app its create_app() made"
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=_port_arg, default=None, help="port (default: $PORT)")
    serve.add_argument(
        "--threads", type=_count_arg, default=8, help="threads that run requests (default 8)"
    )
    serve.add_argument(
        "--connection-limit",
        type=_connections_arg,
        default=1000,
        help="open connections at most, slow ones included (default 1000)",
    )
    serve.add_argument(
        "--channel-timeout",
        type=_seconds_arg,
        default=60.0,
        help="close a connection silent for this long, e.g. 60s (default 60s)",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=_grace_arg,
        default=8.0,
        help="on SIGTERM, how long requests in flight may finish (default 8s, inside Cloud "
        "Run's 10 s)",
    )
    serve.add_argument(
        "--watcher",
        action="store_true",
        help="also run the watcher in this process (poller mode), as the container does",
    )
    serve.set_defaults(func=cmd_serve)

    watcher = sub.add_parser("watcher", help="run the watcher until SIGTERM")
    watcher.add_argument("--app", help="module:attribute of your Bridge")
    watcher.set_defaults(func=cmd_watcher)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bridge", help="bridge base URL (default $LROBRIDGE_URL or localhost)")
        p.add_argument("--api-key", help="API key (default $LROBRIDGE_API_KEY)")

    watch = sub.add_parser("watch", help="register a watch with a running bridge")
    watch.add_argument("operation", help="full operation name on its source")
    watch.add_argument("--source", required=True, help="grpc://host:port or http(s)://host/v1")
    watch.add_argument("--deadline", help="give up after this long (e.g. 1h): outcome expired")
    client_flags(watch)
    watch.set_defaults(func=cmd_watch)

    watches = sub.add_parser("watches", help="list, show or delete watches")
    watches_sub = verbs_of(watches, "watches_command")
    listing = watches_sub.add_parser("list", help="list watches (the first page)")
    listing.add_argument(
        "--state",
        choices=["active", "publishing", "completed", "failed"],
        help="only watches in this state",
    )
    add_format_flag(listing)
    client_flags(listing)
    for verb, text in (("get", "show one watch"), ("rm", "delete a watch")):
        p = watches_sub.add_parser(verb, help=text)
        p.add_argument("id", help="watch id or watches/{id}")
        client_flags(p)
    watches.set_defaults(func=cmd_watches)

    from lrobridge.cli.webhooks import add_parser as add_webhooks_parser

    add_webhooks_parser(sub, client_flags)

    quarantine = sub.add_parser(
        "quarantine", help="messages that could never be processed, newest first"
    )
    quarantine_sub = verbs_of(quarantine, "quarantine_command")
    listing = quarantine_sub.add_parser(
        "list", help="quarantined messages, newest first, without their bodies unless --view FULL"
    )
    listing.add_argument(
        "--limit",
        type=int,
        default=0,
        help="messages to show (default 50, at most 1000; 10 with --view FULL)",
    )
    listing.add_argument(
        "--view",
        type=str.upper,
        choices=("BASIC", "FULL"),
        default="BASIC",
        help="BASIC: no bodies (default); FULL: with bodies (at most 10 entries)",
    )
    add_format_flag(listing)
    client_flags(listing)
    getting = quarantine_sub.add_parser("get", help="one entry with its body (base64)")
    getting.add_argument("id", type=_quarantine_id, help="the entry's id, from list")
    client_flags(getting)
    quarantine.set_defaults(func=cmd_quarantine)

    pubsub = sub.add_parser("pubsub", help="Pub/Sub set-up")
    pubsub_sub = verbs_of(pubsub, "pubsub_command")
    init = pubsub_sub.add_parser("init", help="create the topic and push subscription")
    init.add_argument("--push-endpoint", required=True, help="https://.../pubsub/push")
    init.add_argument("--service-account", help="email the push subscription signs tokens as")
    init.add_argument("--audience", help="OIDC audience (default: the push endpoint)")
    init.add_argument("--subscription", help="subscription id (default $LROBRIDGE_SUBSCRIPTION)")
    init.add_argument(
        "--watch-push-endpoint",
        help="pubsub watch mode: https://.../pubsub/watch (default: beside --push-endpoint)",
    )
    init.add_argument(
        "--dead-letter-topic",
        default="lro-dead-letter",
        help="pubsub watch mode: topic id for watch messages that exhaust their deliveries",
    )
    init.set_defaults(func=cmd_pubsub_init)
    return parser


def version() -> str:
    """The installed distribution's version."""
    try:
        return importlib.metadata.version("lrobridge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _missing_verb(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 with the list of verbs when a command group was given without one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen is None:
                parser.print_help(sys.stderr)
                word = "command" if parser.prog == "lrobridge" else "verb"
                verbs = ", ".join(action.choices)
                parser.exit(2, f"{parser.prog}: error: name a {word}: {verbs}\n")
            _missing_verb(action.choices[chosen], args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _missing_verb(parser, args)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format, project=settings.project)
        return int(args.func(args))
    except InvalidArgument as exc:
        print(f"lrobridge: error: {exc.message}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"lrobridge: error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # a port in use, a folder that cannot be written, ...
        print(f"lrobridge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
