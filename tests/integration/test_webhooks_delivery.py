"""Webhook delivery to real HTTP receivers on loopback: signatures, retries, Retry-After, 410,
dead letters, timeouts, secret rotation, the SSRF guard at delivery time, pinned connections.

Pushes go through the Flask test client (the push endpoint in-process); every webhook request
is real HTTP to an ``http.server`` on 127.0.0.x, verified by the receiver with the
``standardwebhooks`` package. The delivery worker runs on a manual clock, so a retry schedule of
minutes or days is walked by advancing the clock and draining, never by sleeping.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import pathlib
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask.testing import FlaskClient

from lrobridge import Bridge
from lrobridge.adapters.webhook_sender import PinnedSender
from lrobridge.config import Settings
from lrobridge.webhooks.schedule import DISABLE_AFTER, MAX_ATTEMPTS
from lrobridge.wiring.parts import DeliveryMode, WebhookParts
from tests.support.webhooks import (
    Answer,
    ManualClock,
    MapResolver,
    Received,
    Receiver,
    free_port,
    push_body,
    wait_until,
)

pytestmark = pytest.mark.integration

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclasses.dataclass
class Env:
    bridge: Bridge
    runtime: WebhookParts
    client: FlaskClient
    clock: ManualClock
    resolver: MapResolver

    def register(self, url: str, **fields: Any) -> tuple[str, str]:
        response = self.client.post("/v1/webhooks", json={"url": url, **fields}, headers=AUTH)
        assert response.status_code == 201, response.get_json()
        body = response.get_json()
        return body["name"], body["secret"]

    def push(self, name: str, outcome: str = "succeeded") -> None:
        response = self.client.post("/pubsub/push", json=push_body(name, outcome))
        assert response.status_code == 204, response.data

    def drain(self) -> dict[str, Any]:
        response = self.client.post("/v1/deliveries:drain", json={"maxTime": "10s"}, headers=AUTH)
        assert response.status_code == 200, response.data
        return response.get_json()  # type: ignore[no-any-return]

    def deliveries(self, webhook: str | None = None, state: str = "") -> list[dict[str, Any]]:
        path = f"/v1/{webhook}/deliveries" if webhook else "/v1/deliveries"
        query = f"?pageSize=1000&state={state}"
        response = self.client.get(path + query, headers=AUTH)
        assert response.status_code == 200, response.data
        return response.get_json()["deliveries"]  # type: ignore[no-any-return]

    def webhook(self, name: str) -> dict[str, Any]:
        return self.client.get(f"/v1/{name}", headers=AUTH).get_json()  # type: ignore[no-any-return]

    def walk_to_next_attempt(self) -> dict[str, Any]:
        """Advance the clock to the latest next attempt of the pending deliveries and drain
        (jitter spreads one round of retries; rounds do not overlap)."""
        times = [
            datetime.datetime.fromisoformat(d["nextAttemptTime"]).timestamp()
            for d in self.deliveries(state="PENDING")
        ]
        assert times, "nothing is pending"
        self.clock.now = max(self.clock.now, max(times) + 0.001)
        return self.drain()


EnvFactory = Callable[..., Env]


@pytest.fixture
def make_env(tmp_path: pathlib.Path) -> Iterator[EnvFactory]:
    made: list[Env] = []

    def make(
        *,
        allow: str = "127.0.0.0/8",
        timeout: float = 2.0,
        mode: DeliveryMode = "request",
        ca_certs: str | None = None,
        real_clock: bool = False,
    ) -> Env:
        settings = dataclasses.replace(
            Settings(),
            push_auth="none",
            api_keys=frozenset({KEY}),
            project="p",
            store_url=f"sqlite:///{tmp_path / f'bridge{len(made)}.db'}",
            webhook_allow_networks=tuple(ipaddress.ip_network(n) for n in allow.split(",") if n),
            webhook_timeout=timeout,
            webhook_concurrency=8,
        )
        clock = ManualClock()
        resolver = MapResolver()
        runtime = WebhookParts(
            settings,
            mode=mode,
            resolver=resolver,
            sender=PinnedSender(concurrency=8, ca_certs=ca_certs) if ca_certs else None,
            clock=time.time if real_clock else clock,
            rng=random.Random(4),
        )
        bridge = Bridge(settings, webhooks=runtime)
        env = Env(bridge, runtime, bridge.create_app().test_client(), clock, resolver)
        made.append(env)
        return env

    yield make
    for env in made:
        env.bridge.close()


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Answer:
    return code, headers or {}, body


def test_the_receiver_verifies_the_signature_and_reads_the_operation(make_env: EnvFactory) -> None:
    env = make_env()
    with Receiver() as receiver:
        name, secret = env.register(receiver.url, outcomes=["failed"])
        receiver.secrets.append(secret)
        env.push("projects/p/operations/ok", "succeeded")  # filtered out
        env.push("projects/p/operations/bad", "failed")
        # request mode: the push request made the first attempt before it answered
        [got] = receiver.received
        assert got.verified
        assert got.payload["type"] == "operation.failed"
        assert got.payload["data"]["operation"] == {
            "name": "projects/p/operations/bad",
            "done": True,
            "error": {"code": 13, "message": "boom"},
        }
        assert got.payload["data"]["source"] == "grpc://127.0.0.1:9"
        event_id = got.payload["data"]["eventId"]
        assert got.webhook_id == f"msg_{event_id}"
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
        assert got.headers["content-type"] == "application/json"
        # a redelivered push writes nothing new and sends nothing
        env.push("projects/p/operations/bad", "failed")
        assert len(receiver.received) == 1
        [delivery] = env.deliveries(name)
        assert delivery["state"] == "SUCCEEDED" and delivery["webhookId"] == got.webhook_id
        [attempt] = delivery["attempts"]
        assert attempt["statusCode"] == 200 and attempt["responseBody"] == "ok"
        assert attempt["address"] == "127.0.0.1" and attempt["latency"].endswith("s")


def test_a_receiver_down_then_up_gets_every_webhook_id_exactly_once(make_env: EnvFactory) -> None:
    env = make_env()
    port_a, port_b = free_port(), free_port()  # nothing listens yet: connections are refused
    name_a, secret_a = env.register(f"http://127.0.0.1:{port_a}/a")
    name_b, secret_b = env.register(f"http://127.0.0.1:{port_b}/b")
    operations = [f"operations/down-{i}" for i in range(6)]
    for op in operations:
        env.push(op, "succeeded")
    for name in (name_a, name_b):
        assert [d["state"] for d in env.deliveries(name)] == ["PENDING"] * 6
    assert env.walk_to_next_attempt()["retrying"] == 12  # still down: second attempt fails
    with (
        Receiver(port=port_a, secrets=[secret_a]) as a,
        Receiver(port=port_b, secrets=[secret_b]) as b,
    ):
        counts = env.walk_to_next_attempt()
        assert counts["succeeded"] == 12 and counts["pending"] == 0
        for receiver, name in ((a, name_a), (b, name_b)):
            ids = [r.webhook_id for r in receiver.received]
            assert len(ids) == len(set(ids)) == 6  # exactly once per webhook-id
            assert all(r.verified for r in receiver.received)
            assert {r.payload["data"]["operation"]["name"] for r in receiver.received} == set(
                operations
            )
            for delivery in env.deliveries(name):
                assert delivery["state"] == "SUCCEEDED"
                assert [a["statusCode"] for a in delivery["attempts"]] == [0, 0, 200]
                assert "connection failed" in delivery["attempts"][0]["error"]
        env.clock.advance(86400)
        assert env.drain()["attempted"] == 0  # nothing is sent twice


def test_retry_after_sets_the_next_attempt_exactly(make_env: EnvFactory) -> None:
    env = make_env()
    answers = iter([status(503, {"Retry-After": "120"}, b"busy"), status(204)])
    with Receiver(respond=lambda _: next(answers)) as receiver:
        name, _ = env.register(receiver.url)
        env.push("operations/slow-down")
        [delivery] = env.deliveries(name)
        assert delivery["state"] == "PENDING" and delivery["lastStatusCode"] == 503
        attempt_time = datetime.datetime.fromisoformat(delivery["attempts"][0]["time"])
        next_time = datetime.datetime.fromisoformat(delivery["nextAttemptTime"])
        assert (next_time - attempt_time).total_seconds() == pytest.approx(120, abs=0.002)
        env.clock.advance(119)
        assert env.drain()["attempted"] == 0  # the schedule alone would have retried at ~5 s
        env.clock.advance(1.01)
        assert env.drain()["succeeded"] == 1
        assert len(receiver.received) == 2


def test_410_disables_the_webhook_until_enabled_and_replay_sends_what_it_missed(
    make_env: EnvFactory,
) -> None:
    env = make_env()
    gone = [True]

    def respond(_: Received) -> Answer:
        return status(410, body=b"gone") if gone[0] else status(200)

    with Receiver(respond=respond) as receiver:
        name, secret = env.register(receiver.url)
        receiver.secrets.append(secret)
        env.push("operations/first")
        webhook = env.webhook(name)
        assert webhook["state"] == "DISABLED"
        assert webhook["disabledReason"] == "the endpoint answered 410 Gone"
        env.push("operations/second")  # recorded, dead at once, never sent
        assert len(receiver.received) == 1
        states = {d["operation"]: d["state"] for d in env.deliveries(name)}
        assert states == {"operations/first": "DEAD", "operations/second": "DEAD"}
        dead = env.deliveries(state="DEAD")
        assert {d["operation"] for d in dead} == {"operations/first", "operations/second"}
        assert "410" in next(d for d in dead if d["operation"] == "operations/second")["lastError"]
        replay = env.client.post(f"/v1/{name}:replay", json={"since": "1h"}, headers=AUTH)
        assert replay.status_code == 400  # disabled: enable first
        gone[0] = False
        assert env.client.post(f"/v1/{name}:enable", headers=AUTH).get_json()["state"] == "ENABLED"
        replay = env.client.post(f"/v1/{name}:replay", json={"since": "1h"}, headers=AUTH)
        assert replay.get_json()["requeued"] == 2
        assert env.drain()["succeeded"] == 2
        delivered = {r.payload["data"]["operation"]["name"] for r in receiver.successes()}
        assert delivered == {"operations/first", "operations/second"}
        assert all(r.verified for r in receiver.successes())


def test_exhausted_deliveries_are_dead_lettered_listed_and_retried_one_by_one(
    make_env: EnvFactory,
) -> None:
    env = make_env()
    failing = [True]

    def respond(_: Received) -> Answer:
        return status(500, body=b"x" * 10_000) if failing[0] else status(200)

    with Receiver(respond=respond) as receiver:
        name, secret = env.register(receiver.url)
        receiver.secrets.append(secret)
        env.push("operations/doomed")
        started = env.clock.now
        for _ in range(MAX_ATTEMPTS - 1):
            env.walk_to_next_attempt()
        assert env.runtime.store.next_due_time() is None
        [dead] = env.deliveries(state="DEAD")
        assert dead["attemptCount"] == MAX_ATTEMPTS == len(receiver.received)
        assert f"all {MAX_ATTEMPTS} attempts failed (last: HTTP 500)" == dead["lastError"]
        assert 2.5 < (env.clock.now - started) / 86400 < 4  # about three days
        assert all(len(a["responseBody"]) == 2048 for a in dead["attempts"])  # truncated
        assert env.webhook(name)["state"] == "ENABLED"  # under 5 days of failure
        failing[0] = False
        env.clock.now = time.time()  # receivers check the signature's timestamp
        retried = env.client.post(f"/v1/{dead['name']}:retry", headers=AUTH)
        assert retried.status_code == 200
        # The receiver records a request on its own thread, possibly after answering it.
        wait_until(lambda: len(receiver.successes()) == 1, timeout=10)
        [got] = receiver.successes()
        assert got.verified and got.webhook_id == dead["webhookId"]  # stable across retries
        final = env.client.get(f"/v1/{dead['name']}", headers=AUTH).get_json()
        assert final["state"] == "SUCCEEDED" and final["attemptCount"] == MAX_ATTEMPTS + 1


def test_an_endpoint_failing_for_five_days_is_disabled_and_says_so(make_env: EnvFactory) -> None:
    env = make_env()
    with Receiver(respond=lambda _: status(503)) as receiver:
        name, _ = env.register(receiver.url)
        env.push("operations/day-0")
        started = env.clock.now
        day = 0
        while env.webhook(name)["state"] == "ENABLED":
            if env.runtime.store.next_due_time() is None:  # dead-lettered: a new event comes
                day += 1
                env.push(f"operations/day-{day}")
                continue
            env.walk_to_next_attempt()
        webhook = env.webhook(name)
        assert "every attempt failed for 5 days" in webhook["disabledReason"]
        assert env.clock.now - started >= DISABLE_AFTER
        assert env.deliveries(name, state="PENDING") == []
        before = len(receiver.received)
        env.push("operations/after")
        env.clock.advance(3600)
        assert env.drain()["attempted"] == 0 and len(receiver.received) == before


def test_a_slow_receiver_times_out_and_the_delivery_is_retried(make_env: EnvFactory) -> None:
    env = make_env(timeout=0.3)
    release = threading.Event()

    def respond(_: Received) -> Answer:
        release.wait(5)
        return status(200)

    with Receiver(respond=respond) as receiver:
        name, _ = env.register(receiver.url)
        env.push("operations/slow")
        release.set()
        [delivery] = env.deliveries(name)
        assert delivery["state"] == "PENDING"
        assert delivery["attempts"][0]["error"] == "no response within 0.3s"
        assert env.walk_to_next_attempt()["succeeded"] == 1
        # The receiver's own log of what it answered trails the sender reading the answer, and
        # whether the late answer to the timed-out attempt reached a closed socket is a race.
        [delivery] = env.deliveries(name)
        assert delivery["state"] == "SUCCEEDED" and delivery["attemptCount"] == 2
        assert len(receiver.received) == 2


def test_a_rotated_secret_signs_alongside_the_old_one_until_the_overlap_ends(
    make_env: EnvFactory,
) -> None:
    env = make_env()
    with Receiver() as receiver:
        name, old = env.register(receiver.url)
        rotated = env.client.post(
            f"/v1/{name}:rotateSecret", json={"overlap": "4m"}, headers=AUTH
        ).get_json()
        new = rotated["secret"]
        receiver.secrets = [old]
        env.push("operations/r1")
        receiver.secrets = [new]
        env.push("operations/r2")
        assert [r.verified for r in receiver.received] == [True, True]
        assert all(len(r.headers["webhook-signature"].split()) == 2 for r in receiver.received)
        env.clock.advance(241)  # the overlap is over: only the new secret signs
        env.push("operations/r3")
        receiver.secrets = [old]
        env.push("operations/r4")
        assert [r.verified for r in receiver.received[2:]] == [True, False]
        assert len(receiver.received[3].headers["webhook-signature"].split()) == 1


def test_redirects_are_not_followed_to_an_internal_address(make_env: EnvFactory) -> None:
    env = make_env(allow="127.0.0.1/32")
    with Receiver(host="127.0.0.2") as internal:
        location = f"http://127.0.0.2:{internal.port}/admin"
        with Receiver(respond=lambda _: status(307, {"Location": location})) as receiver:
            name, _ = env.register(receiver.url)
            env.push("operations/redirect")
            [delivery] = env.deliveries(name)
            assert delivery["state"] == "PENDING" and delivery["lastStatusCode"] == 307
            assert delivery["lastError"] == "HTTP 307"
        assert internal.received == []
        refused = env.client.post("/v1/webhooks", json={"url": location}, headers=AUTH)
        assert refused.status_code == 400 and "loopback" in refused.get_json()["error"]["message"]


def test_dns_rebinding_after_registration_is_refused_at_delivery_time(
    make_env: EnvFactory,
) -> None:
    env = make_env(allow="127.0.0.1/32")
    with Receiver() as receiver:
        env.resolver.names["rebind.test"] = ["127.0.0.1"]
        name, secret = env.register(f"http://rebind.test:{receiver.port}/hook")
        receiver.secrets.append(secret)
        env.resolver.names["rebind.test"] = ["10.0.0.7"]  # the name now points inside
        env.push("operations/rebind")
        [delivery] = env.deliveries(name)
        assert delivery["state"] == "PENDING" and delivery["attempts"][0]["statusCode"] == 0
        assert "refused by the SSRF guard" in delivery["lastError"]
        assert "10.0.0.7" in delivery["lastError"] and "private" in delivery["lastError"]
        assert receiver.received == []  # no request was made
        env.resolver.names["rebind.test"] = ["127.0.0.1"]
        assert env.walk_to_next_attempt()["succeeded"] == 1
        [got] = receiver.received
        assert got.verified and got.headers["host"] == f"rebind.test:{receiver.port}"


def test_the_connection_goes_to_the_checked_address_with_the_name_in_host(
    make_env: EnvFactory,
) -> None:
    env = make_env()
    with Receiver() as receiver:
        # only the guard's resolver knows this name: success proves the pinned address was used
        env.resolver.names["pinned.test"] = ["127.0.0.1"]
        env.register(f"http://pinned.test:{receiver.port}/p?x=1")
        env.push("operations/pinned")
        [got] = receiver.received
        assert got.headers["host"] == f"pinned.test:{receiver.port}" and got.path == "/p?x=1"
        assert env.resolver.lookups.count("pinned.test") == 2  # at registration and delivery


def _tls_files(tmp_path: pathlib.Path, name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_https_to_a_pinned_address_verifies_the_certificate_against_the_name(
    make_env: EnvFactory, tmp_path: pathlib.Path
) -> None:
    cert, key = _tls_files(tmp_path, "secure.test")
    env = make_env(ca_certs=cert)
    with Receiver() as receiver:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = receiver._server
        assert server is not None
        server.socket = context.wrap_socket(server.socket, server_side=True)
        env.resolver.names["secure.test"] = ["127.0.0.1"]
        env.resolver.names["other.test"] = ["127.0.0.1"]
        good, secret = env.register(f"https://secure.test:{receiver.port}/")
        bad, _ = env.register(f"https://other.test:{receiver.port}/")
        receiver.secrets.append(secret)
        env.push("operations/tls")
        [ok] = env.deliveries(good)
        assert ok["state"] == "SUCCEEDED"
        [refused] = env.deliveries(bad)
        assert refused["state"] == "PENDING" and "TLS failed" in refused["lastError"]
        [got] = receiver.received
        assert got.verified and got.headers["host"] == f"secure.test:{receiver.port}"


def test_names_and_numbers_that_reach_loopback_are_refused_without_an_allow_list(
    make_env: EnvFactory,
) -> None:
    env = make_env(allow="")
    for url, reason in [
        ("https://localhost:8443/", "loopback"),  # from /etc/hosts, no DNS query
        ("https://2130706433/", "loopback"),  # 127.0.0.1 as one decimal number
        ("https://0x7f.1/", "loopback"),
        ("http://localhost:8080/", "https://"),
    ]:
        response = env.client.post("/v1/webhooks", json={"url": url}, headers=AUTH)
        assert response.status_code == 400, url
        assert reason in response.get_json()["error"]["message"], url


def test_in_background_mode_a_push_wakes_the_worker_thread(make_env: EnvFactory) -> None:
    env = make_env(mode="background", real_clock=True)
    with Receiver() as receiver:
        name, secret = env.register(receiver.url)
        receiver.secrets.append(secret)
        for i in range(5):
            env.push(f"operations/bg-{i}")
        receiver.wait_for(5, timeout=10)
        assert all(r.verified for r in receiver.received)
        wait_until(lambda: all(d["state"] == "SUCCEEDED" for d in env.deliveries(name)))


def test_if_the_delivery_records_cannot_be_written_the_push_is_nacked(
    make_env: EnvFactory,
) -> None:
    env = make_env()
    ran: list[str] = []

    @env.bridge.on_complete()
    def callback(event: Any) -> None:
        ran.append(event.name)

    with Receiver() as receiver:
        env.register(receiver.url)
        client = env.bridge.create_app().test_client()
        env.runtime.store.close()
        response = client.post("/pubsub/push", json=push_body("operations/lost?"))
        assert response.status_code == 503
        assert "webhooks" in json.dumps(response.get_json())
        assert ran == []  # callbacks wait until every sink holds the event
