"""Secrets and Standard Webhooks signatures (lrobridge.webhooks.signing)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
import standardwebhooks

from lrobridge.errors import InvalidArgument
from lrobridge.webhooks.signing import (
    SECRET_BYTES,
    generate_secret,
    signature,
    signed_headers,
    validate_secret,
)

BODY = b'{"type":"operation.succeeded","data":{"operation":{"name":"operations/\xc3\xa9"}}}'


def test_generated_secrets_are_whsec_base64_of_32_random_bytes() -> None:
    secrets = {generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == SECRET_BYTES
        assert validate_secret(secret) == secret


@pytest.mark.parametrize("bad", ["abc", "whsec_", "whsec_!!!!", "whsec_" + "QUFB" * 2])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_secret(bad)


def test_signed_content_is_id_dot_timestamp_dot_body_with_hmac_sha256() -> None:
    secret = generate_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, b"msg_abc.1700000000." + BODY, hashlib.sha256).digest()
    assert signature(secret, msg_id="msg_abc", timestamp=1700000000, body=BODY) == (
        "v1," + base64.b64encode(expected).decode()
    )


def test_a_receiver_verifies_the_headers_with_the_standardwebhooks_package() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], msg_id="msg_1", timestamp=int(time.time()), body=BODY)
    assert headers["webhook-id"] == "msg_1"
    assert headers["content-type"] == "application/json"
    payload = standardwebhooks.Webhook(secret).verify(BODY, headers)
    assert payload["type"] == "operation.succeeded"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY.replace(b"succeeded", b"failed"), headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(BODY, headers)


def test_during_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    new, old = generate_secret(), generate_secret()
    headers = signed_headers([new, old], msg_id="msg_2", timestamp=int(time.time()), body=BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        standardwebhooks.Webhook(secret).verify(BODY, headers)


def test_signing_needs_a_secret() -> None:
    with pytest.raises(InvalidArgument):
        signed_headers([], msg_id="m", timestamp=1, body=b"{}")
