"""Decoding Pub/Sub push requests: golden envelopes (tests/data/push) and every error message."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from lrobridge.delivery.envelope import PushMessage, decode_push
from lrobridge.errors import InvalidArgument

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "push"
DATA = b"\x08\x01operation bytes \xff\x00"
OPERATION = "projects/p/locations/l/operations/op-1"
EXPECTED = PushMessage(
    data=DATA,
    attributes={
        "operation": OPERATION,
        "outcome": "succeeded",
        "event_id": "ev-1",
        "payload_format": "binary",
        "ce-specversion": "1.0",
    },
    message_id="2070443601311540",
    publish_time="2021-02-26T19:13:55.749Z",
    subscription="projects/p/subscriptions/lro-completed-push",
    delivery_attempt=2,
    ordering_key=OPERATION,
)
JSON_HEADERS = {"Content-Type": "application/json"}


def _body(envelope: Any) -> bytes:
    return json.dumps(envelope).encode()


def _decode_error(body: bytes, headers: dict[str, str] | None = None) -> str:
    with pytest.raises(InvalidArgument) as info:
        decode_push(body, headers if headers is not None else JSON_HEADERS)
    return info.value.message


@pytest.mark.parametrize("name", ["wrapped_camel", "wrapped_snake"])
def test_golden_wrapped_envelopes_decode_to_the_same_message(name: str) -> None:
    body = (GOLDEN / f"{name}.json").read_bytes()
    assert decode_push(body, JSON_HEADERS) == EXPECTED


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad_base64_data", "message.data is not valid base64"),
        ("bad_attribute_value", "attribute 'outcome' is a number"),
    ],
)
def test_golden_bad_envelopes_are_rejected_with_the_reason(name: str, expected: str) -> None:
    assert expected in _decode_error((GOLDEN / f"{name}.json").read_bytes())


def test_a_minimal_envelope_has_empty_data_no_attributes_and_no_delivery_attempt() -> None:
    message = decode_push(_body({"message": {}}), {})
    assert message == PushMessage(b"", {}, "", "", "", None, "")


def test_empty_data_and_null_fields_are_allowed() -> None:
    envelope = {
        "message": {"data": "", "attributes": None, "messageId": None},
        "subscription": None,
    }
    message = decode_push(_body(envelope), {})
    assert (message.data, message.attributes, message.message_id) == (b"", {}, "")


def test_a_json_body_is_treated_as_wrapped_even_with_unrelated_goog_headers() -> None:
    envelope = {"message": {"data": base64.b64encode(b"x").decode(), "messageId": "7"}}
    message = decode_push(
        _body(envelope), {"X-Goog-Pubsub-Other": "1", "x-cloud-trace-context": "t"}
    )
    assert (message.data, message.message_id, message.attributes) == (b"x", "7", {})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "push body is empty"),
        (b"not json at all", "push body is not JSON (Expecting value at line 1 column 1)"),
        (b"\xff\xfe\x00garbage", "push body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "push body is not JSON (nested too deeply)"),
        (b"[1, 2]", "push body is JSON an array, not an object"),
        (b'"message"', "push body is JSON a string, not an object"),
        (b"{}", 'push envelope has no "message" field'),
        (b'{"message": null}', 'push envelope has no "message" field'),
        (b'{"message": "aGk="}', 'push envelope field "message" is a string, not an object'),
        (b'{"message": {"data": 5}}', "message.data is a number, not a base64 string"),
        (b'{"message": {"data": "aGk"}}', "message.data is not valid base64"),
        (b'{"message": {"data": "aG k="}}', "message.data is not valid base64"),
        (b'{"message": {"data": "a-_w"}}', "message.data is not valid base64"),
        (b'{"message": {"data": "\\u00e9\\u00e9=="}}', "message.data is not valid base64"),
        (b'{"message": {"attributes": ["a"]}}', "message.attributes is an array, not an object"),
        (
            b'{"message": {"attributes": {"k": null}}}',
            "must map strings to strings; attribute 'k' is null",
        ),
        (
            b'{"message": {"attributes": {"k": true}}}',
            "must map strings to strings; attribute 'k' is a boolean",
        ),
        (b'{"message": {"messageId": 12}}', "message.messageId is a number, not a string"),
        (b'{"message": {"message_id": 12}}', "message.messageId is a number, not a string"),
        (b'{"message": {"publishTime": {}}}', "message.publishTime is an object, not a string"),
        (b'{"message": {"orderingKey": []}}', "message.orderingKey is an array, not a string"),
        (b'{"message": {}, "subscription": 1}', "field subscription is a number, not a string"),
        (
            b'{"message": {"messageId": "1", "message_id": "2"}}',
            "message.messageId and message.message_id disagree ('1' vs '2')",
        ),
        (
            b'{"message": {}, "deliveryAttempt": 1, "delivery_attempt": 2}',
            "deliveryAttempt and delivery_attempt disagree",
        ),
        (b'{"message": {}, "deliveryAttempt": "3"}', "deliveryAttempt is '3', not a positive"),
        (b'{"message": {}, "deliveryAttempt": 0}', "deliveryAttempt is 0, not a positive"),
        (b'{"message": {}, "deliveryAttempt": true}', "deliveryAttempt is True, not a positive"),
        (b'{"message": {}, "deliveryAttempt": 1.5}', "deliveryAttempt is 1.5, not a positive"),
    ],
)
def test_a_malformed_envelope_is_rejected_saying_what_is_wrong(body: bytes, expected: str) -> None:
    assert expected in _decode_error(body)


def test_the_not_json_message_hints_at_unwrapped_write_metadata() -> None:
    assert "--push-no-wrapper-write-metadata" in _decode_error(b"\x08\x01raw protobuf")


def test_long_values_are_shortened_in_error_messages() -> None:
    body = _body({"message": {"messageId": "a" * 500, "message_id": "b" * 500}})
    message = _decode_error(body)
    assert "..." in message and "a" * 100 not in message


# -- unwrapped (--push-no-wrapper --push-no-wrapper-write-metadata) ------------------------------

UNWRAPPED_HEADERS = {
    # what Pub/Sub writes
    "X-Goog-Pubsub-Message-Id": "2070443601311540",
    "X-Goog-Pubsub-Publish-Time": "2021-02-26T19:13:55.749Z",
    "X-Goog-Pubsub-Subscription-Name": "projects/p/subscriptions/lro-completed-push",
    "X-Goog-Pubsub-Ordering-Key": OPERATION,
    "Operation": OPERATION,
    "Outcome": "succeeded",
    "Event_Id": "ev-1",
    "Payload_Format": "binary",
    "Ce-Specversion": "1.0",
    # transport headers added by Pub/Sub, the HTTP stack and load balancers: never attributes
    "Host": "bridge.example",
    "Content-Type": "application/octet-stream",
    "Content-Length": str(len(DATA)),
    "Authorization": "Bearer secret",
    "User-Agent": "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
    "From": "noreply@google.com",
    "Accept-Encoding": "gzip, deflate, br",
    "X-Forwarded-For": "10.0.0.1",
    "X-Forwarded-Proto": "https",
    "X-Cloud-Trace-Context": "abc/1;o=1",
    "Traceparent": "00-abc-def-01",
    "X-Goog-Pubsub-Unknown-Future-Field": "ignored",
}


def test_an_unwrapped_push_takes_data_from_the_body_and_the_rest_from_headers() -> None:
    message = decode_push(DATA, UNWRAPPED_HEADERS)
    assert message == PushMessage(
        data=DATA,
        attributes=EXPECTED.attributes,
        message_id=EXPECTED.message_id,
        publish_time=EXPECTED.publish_time,
        subscription=EXPECTED.subscription,
        delivery_attempt=None,
        ordering_key=OPERATION,
    )


def test_unwrapped_header_names_are_matched_case_insensitively_and_keys_lowercased() -> None:
    headers = {
        "x-goog-pubsub-message-id": "9",
        "X-GOOG-PUBSUB-DELIVERY-ATTEMPT": "4",
        "OUTCOME": "x",
    }
    message = decode_push(b"", headers)
    assert (message.message_id, message.delivery_attempt, message.attributes) == (
        "9",
        4,
        {"outcome": "x"},
    )
    assert message.data == b""


def test_an_unwrapped_json_body_is_data_not_an_envelope() -> None:
    body = _body({"message": {"data": "aGk="}})
    assert decode_push(body, {"X-Goog-Pubsub-Message-Id": "1"}).data == body


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Goog-Pubsub-Message-Id": "  "}, "header x-goog-pubsub-message-id is empty"),
        (
            {"X-Goog-Pubsub-Message-Id": "1", "X-Goog-Pubsub-Delivery-Attempt": "two"},
            "x-goog-pubsub-delivery-attempt='two' is not a positive integer",
        ),
        (
            {"X-Goog-Pubsub-Message-Id": "1", "X-Goog-Pubsub-Delivery-Attempt": "0"},
            "x-goog-pubsub-delivery-attempt='0' is not a positive integer",
        ),
    ],
)
def test_a_malformed_unwrapped_push_is_rejected_saying_what_is_wrong(
    headers: dict[str, str], expected: str
) -> None:
    assert expected in _decode_error(b"data", headers)


def test_an_unwrapped_delivery_attempt_that_is_not_ascii_digits_is_refused() -> None:
    # '\xb2' is one Latin-1 header byte: str.isdigit() says yes, int() refuses it.
    headers = {"x-goog-pubsub-message-id": "1", "x-goog-pubsub-delivery-attempt": "\u00b2"}
    with pytest.raises(InvalidArgument, match="is not a positive integer"):
        decode_push(b"x", headers)
