"""What every ``lrobridge`` command shares: loading the user's bridge (``--app module:bridge``),
waiting for a stop signal, calling the bridge's REST API, printing JSON, command groups.

The command modules (:mod:`lrobridge.cli.main`, :mod:`lrobridge.cli.dev`,
:mod:`lrobridge.cli.webhooks`) import this module; it imports none of them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Literal, overload

from lrobridge.bridge import BRIDGE_EXTENSION, Bridge
from lrobridge.config import Settings
from lrobridge.errors import BridgeError, ConfigError

if TYPE_CHECKING:
    from flask import Flask


@overload
def load_bridge(spec: str | None) -> Bridge: ...
@overload
def load_bridge(spec: str | None, *, allow_app: Literal[True]) -> Bridge | Flask: ...


def load_bridge(spec: str | None, *, allow_app: bool = False) -> Bridge | Flask:
    """The Bridge named by ``module:attribute`` (a plain ``Bridge()`` when spec is None); with
    ``allow_app``, also the Flask app a Bridge's ``create_app()`` made (``lrobridge.wsgi:app``)."""
    if spec is None:
        return Bridge()
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--app {spec!r}: use module:attribute, e.g. myservice.hooks:bridge")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--app {spec!r}: cannot import {exc.name!r}") from None
    target = getattr(module, attribute, None)
    if target is None:
        raise ConfigError(f"--app {spec!r}: module {module_name!r} has no {attribute!r}")
    if allow_app and isinstance(getattr(target, "extensions", {}).get(BRIDGE_EXTENSION), Bridge):
        return target  # type: ignore[no-any-return]
    if not isinstance(target, Bridge):
        raise ConfigError(
            f"--app {spec!r}: {attribute!r} is a {type(target).__name__}, not a lrobridge.Bridge"
            + (" or the app its create_app() made" if allow_app else "")
        )
    return target


def wait_for_signal() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def api_endpoint(settings: Settings, args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    base = (args.bridge or settings.bridge_url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    key = args.api_key or settings.api_key
    if not key and settings.api_keys:
        key = sorted(settings.api_keys)[0]
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return base, headers


def call(method: str, url: str, headers: dict[str, str], body: Any = None) -> Any:
    import requests

    try:
        response = requests.request(method, url, headers=headers, json=body, timeout=30)
    except requests.RequestException as exc:
        raise BridgeError(f"cannot reach the bridge at {url}: {exc}") from None
    try:
        payload = response.json() if response.content else {}
    except ValueError:
        payload = {"error": {"message": response.text[:500]}}
    if response.status_code >= 400:
        message = payload.get("error", {}).get("message", response.reason)
        raise BridgeError(f"{response.status_code} from {url}: {message}")
    return payload


def print_json(value: Any, *, ensure_ascii: bool = True) -> None:
    """Print an API answer as indented JSON."""
    print(json.dumps(value, indent=2, ensure_ascii=ensure_ascii))


def verbs_of(
    parser: argparse.ArgumentParser, dest: str, *, metavar: str = "VERB"
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The sub-commands of ``parser``; :func:`lrobridge.cli.main.main` tells a call that names
    none which exist."""
    return parser.add_subparsers(dest=dest, metavar=metavar)
