"""Secrets and signatures of webhook requests, per the Standard Webhooks specification.

* A secret is ``whsec_`` + base64 of :data:`SECRET_BYTES` random bytes, generated per endpoint
  and shown once (on creation and on rotation).
* Every request carries ``webhook-id`` (the message id, stable across retries),
  ``webhook-timestamp`` (the attempt's Unix time in seconds) and ``webhook-signature``:
  ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one space-separated entry per
  active secret (two during a rotation's overlap, so receivers holding either secret verify).

The HMAC itself is the ``standardwebhooks`` package's (:class:`standardwebhooks.Webhook`), the
reference implementation receivers use to verify. Pure module.
"""

from __future__ import annotations

import base64
import datetime
import secrets
from collections.abc import Sequence

from standardwebhooks import Webhook as _StandardWebhook

from lrobridge.errors import InvalidArgument

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "lrobridge-webhooks/1"


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def validate_secret(secret: str) -> str:
    """``secret`` if the standardwebhooks package can sign with it, else InvalidArgument."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidArgument(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise InvalidArgument("a webhook secret is whsec_ followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise InvalidArgument("a webhook secret holds between 24 and 64 bytes")
    return secret


def signature(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``{msg_id}.{timestamp}.{body}``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return str(_StandardWebhook(secret).sign(msg_id, moment, body.decode("utf-8")))


def signed_headers(
    secrets_: Sequence[str], *, msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one attempt: content type, user agent and the three webhook-* headers."""
    if not secrets_:
        raise InvalidArgument("a webhook needs at least one signing secret")
    signatures = " ".join(
        signature(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets_
    )
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }
