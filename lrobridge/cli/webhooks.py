"""``lrobridge webhooks ...``: the webhook commands, through a running bridge's REST API.

``add URL [--operation GLOB] [--outcome O ...] [--metadata-type URL] [--description TEXT]``
prints the new webhook with its secret (shown this once); ``list``, ``get ID``, ``rm ID``,
``deliveries [ID] [--state S]`` (the delivery log: a row per delivery, then one line per
attempt: time, status code, latency, start of the response body), ``retry DELIVERY``,
``replay ID --since 24h|TIME``, ``rotate-secret ID [--overlap 24h]``, ``enable ID`` and
``drain [--max-time 45s]``. ``list`` and ``deliveries`` take ``--format table|json`` like every
list command (:mod:`lrobridge.cli.output`).
:mod:`lrobridge.cli.main` adds this parser and handles errors the same way as for every command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from lrobridge.cli.common import api_endpoint, print_json, verbs_of
from lrobridge.cli.common import call as call_api
from lrobridge.cli.output import Column, Item, add_format_flag, print_listing
from lrobridge.core.names import validate_resource_id
from lrobridge.delivery.dispatch import EVENT_TYPES


def add_parser(
    sub: Any, client_flags: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add ``webhooks`` to the top-level subparsers ``sub``."""
    webhooks = sub.add_parser("webhooks", help="register webhooks and read their delivery log")
    verbs = verbs_of(webhooks, "webhooks_command")

    add = verbs.add_parser("add", help="register an https endpoint (prints its secret once)")
    add.add_argument("url", help="https://... (http only for LROBRIDGE_WEBHOOK_ALLOW_NETWORKS)")
    add.add_argument("--operation", help="operation-name glob (* one segment, ** any)")
    add.add_argument(
        "--outcome",
        action="append",
        choices=EVENT_TYPES,
        help="only these outcomes (repeat the flag for several; default every completion)",
    )
    add.add_argument("--metadata-type", help="only operations with this metadata type URL")
    add.add_argument("--description", default="", help="free text for people")

    add_format_flag(verbs.add_parser("list", help="list webhooks"))
    for verb, text in (
        ("get", "show one webhook"),
        ("rm", "delete a webhook with its deliveries"),
        ("enable", "re-enable a disabled webhook"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("id", help="webhook id or webhooks/{id}")

    deliveries = verbs.add_parser("deliveries", help="delivery log (all webhooks without ID)")
    deliveries.add_argument("id", nargs="?", help="webhook id or webhooks/{id}")
    deliveries.add_argument(
        "--state", choices=["pending", "succeeded", "dead"], help="dead: the dead letters"
    )
    deliveries.add_argument("--limit", type=int, default=20, help="deliveries to show")
    add_format_flag(deliveries)
    deliveries.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="the same as --format json (kept for scripts written before --format)",
    )

    retry = verbs.add_parser("retry", help="send one delivery again now")
    retry.add_argument("delivery", help="delivery id or deliveries/{id}")

    replay = verbs.add_parser("replay", help="requeue a webhook's dead deliveries since a time")
    replay.add_argument("id", help="webhook id or webhooks/{id}")
    replay.add_argument("--since", required=True, help="RFC 3339 time or a duration ago (24h)")

    rotate = verbs.add_parser("rotate-secret", help="new secret; the old one signs a while")
    rotate.add_argument("id", help="webhook id or webhooks/{id}")
    rotate.add_argument("--overlap", help="how long the old secret still signs (default 24h)")

    drain = verbs.add_parser("drain", help="run due deliveries now, for a bounded time")
    drain.add_argument("--max-time", help="longest time to start attempts (default 45s)")

    for parser in verbs.choices.values():
        client_flags(parser)
    webhooks.set_defaults(func=run)
    return webhooks  # type: ignore[no-any-return]


def _webhook(value: str) -> str:
    return validate_resource_id(value.removeprefix("webhooks/"), "webhook")


def _delivery(value: str) -> str:
    return validate_resource_id(value.removeprefix("deliveries/"), "delivery")


def run(args: argparse.Namespace) -> int:
    from lrobridge.config import Settings

    base, headers = api_endpoint(Settings.from_env(), args)
    api = f"{base}/v1"
    verb = args.webhooks_command

    def call(method: str, path: str, body: Any = None) -> Any:
        return call_api(method, f"{api}/{path}", headers, body)

    if verb == "add":
        body: dict[str, Any] = {"url": args.url, "description": args.description}
        if args.operation:
            body["operation"] = args.operation
        if args.outcome:
            body["outcomes"] = args.outcome
        if args.metadata_type:
            body["metadataType"] = args.metadata_type
        _print(call("POST", "webhooks", body))
        print(
            "The secret is shown only now: store it where the receiver can read it.",
            file=sys.stderr,
        )
    elif verb == "list":
        print_listing(
            call("GET", "webhooks?pageSize=1000"), "webhooks", WEBHOOK_COLUMNS, args.format
        )
    elif verb == "get":
        _print(call("GET", f"webhooks/{_webhook(args.id)}"))
    elif verb == "rm":
        call("DELETE", f"webhooks/{_webhook(args.id)}")
        print(f"deleted webhooks/{args.id.removeprefix('webhooks/')}")
    elif verb == "enable":
        _print(call("POST", f"webhooks/{_webhook(args.id)}:enable", {}))
    elif verb == "deliveries":
        query: dict[str, Any] = {"pageSize": args.limit}
        if args.state:
            query["state"] = args.state.upper()
        path = f"webhooks/{_webhook(args.id)}/deliveries" if args.id else "deliveries"
        listing = call("GET", f"{path}?{urlencode(query)}")
        print_listing(listing, "deliveries", DELIVERY_COLUMNS, args.format, details=attempt_lines)
    elif verb == "retry":
        _print(call("POST", f"deliveries/{_delivery(args.delivery)}:retry", {}))
    elif verb == "replay":
        _print(call("POST", f"webhooks/{_webhook(args.id)}:replay", {"since": args.since}))
    elif verb == "rotate-secret":
        rotate: dict[str, Any] = {} if not args.overlap else {"overlap": args.overlap}
        _print(call("POST", f"webhooks/{_webhook(args.id)}:rotateSecret", rotate))
    else:  # drain
        _print(
            call("POST", "deliveries:drain", {"maxTime": args.max_time} if args.max_time else {})
        )
    return 0


def _print(value: Any) -> None:
    print_json(value, ensure_ascii=False)


WEBHOOK_COLUMNS: list[Column] = [
    ("NAME", lambda w: w.get("name")),
    ("STATE", lambda w: w.get("state")),
    ("URL", lambda w: w.get("url")),
    ("OPERATION", lambda w: w.get("operation") or "*"),
    ("OUTCOMES", lambda w: w.get("outcomes") or "all"),
    ("DESCRIPTION", lambda w: w.get("description")),
]


def _next_or_error(d: Item) -> object:
    if d.get("state") == "DEAD" and d.get("lastError"):
        return d["lastError"]
    return f"next {d['nextAttemptTime']}" if "nextAttemptTime" in d else None


DELIVERY_COLUMNS: list[Column] = [
    ("NAME", lambda d: d.get("name")),
    ("STATE", lambda d: d.get("state")),
    ("EVENT", lambda d: d.get("eventType")),
    ("OPERATION", lambda d: d.get("operation")),
    ("WEBHOOK", lambda d: d.get("webhook")),
    ("ATTEMPTS", lambda d: d.get("attemptCount", 0)),
    ("NEXT / ERROR", _next_or_error),
]


def attempt_lines(delivery: Item) -> list[str]:
    """The delivery log: one line per attempt (number, time, status, latency, response)."""
    lines = []
    for a in delivery.get("attempts", []):
        status = a.get("statusCode") or "-"
        detail = a.get("error") or ""
        text = " ".join(str(a.get("responseBody", "")).split())
        if text:
            detail = f"{detail}  {text[:80]}".strip()
        lines.append(
            f"#{a.get('number')}  {a.get('time')}  {status!s:>3}  {a.get('latency')}  {detail}"
        )
    return lines
