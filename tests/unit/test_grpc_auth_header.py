"""gRPC calls are authenticated on the credential Cloud Run checked, as REST calls are."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Mapping
from typing import Any

import grpc

from lrobridge.adapters.grpc_server import _Servicer
from lrobridge.config import Settings
from lrobridge.core.access import ApiAuth
from lrobridge.errors import PermissionDenied


class RecordingVerifier:
    """Accepts one token only: the one Cloud Run verified in this test."""

    def __init__(self, good: str) -> None:
        self.good = good
        self.seen: list[str] = []

    def verify_token(self, token: str) -> Mapping[str, Any]:
        self.seen.append(token)
        if token != self.good:
            raise PermissionDenied("not the verified token")
        return {"email": "cron@proj.iam.gserviceaccount.com"}


class Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise RuntimeError("aborted")


def test_a_forged_id_token_beside_a_verified_x_serverless_authorization_is_not_the_one_judged() -> (
    None
):
    verified, forged = "a.verified.SIG", "a.forged.SIGNATURE_REMOVED_BY_GOOGLE"
    verifier = RecordingVerifier(good=verified)
    settings = dataclasses.replace(Settings(), api_keys=frozenset({"key-1"}))
    auth = ApiAuth(settings, id_tokens=verifier)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        servicer = _Servicer(auth, pool)
        context = Context(
            (
                ("authorization", f"Bearer {forged}"),
                ("x-serverless-authorization", f"Bearer {verified}"),
            )
        )

        async def call() -> str:
            return "answered"

        answered = asyncio.run(servicer._answer(context, call))  # type: ignore[arg-type]

    assert answered == "answered" and context.aborted is None
    assert verifier.seen == [verified]
