"""A test OIDC token authority: mints Google-style push ID tokens and serves their certificates.

:class:`TokenAuthority` owns an RSA key and a self-signed certificate for it, serves
``{key id: PEM certificate}`` (the format of https://www.googleapis.com/oauth2/v1/certs that
``google.auth.jwt.decode`` / ``google.oauth2.id_token.verify_token`` read) from a real
``http.server`` on 127.0.0.1, port 0, in a thread, and signs tokens with
``google.auth.crypt.RSASigner`` + ``google.auth.jwt.encode``. Use it as a context manager: the
server is shut down and its socket closed on exit. It counts certificate requests, can set the
``Cache-Control`` header it answers with, can fail on purpose, and can rotate to a new key.
:meth:`TokenAuthority.mint_forged` signs with a key the certificates do not contain.
"""

from __future__ import annotations

import datetime
import http.server
import json
import threading
import time
from types import TracebackType
from typing import Any

import google.auth.crypt
import google.auth.jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

GOOGLE_ISSUER = "https://accounts.google.com"


class SigningKey:
    """An RSA key, its PEM private key and a self-signed PEM certificate for it."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lrobridge test {kid}")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def sign(self, payload: dict[str, Any], *, kid: str | None = None) -> str:
        signer = google.auth.crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
            self.private_pem, key_id=kid or self.kid
        )
        token: bytes = google.auth.jwt.encode(signer, payload)  # type: ignore[no-untyped-call]
        return token.decode("ascii")


def claims(
    audience: str,
    email: str,
    *,
    issuer: str = GOOGLE_ISSUER,
    email_verified: Any = True,
    expires_in: int = 3600,
) -> dict[str, Any]:
    """Claims shaped like the ID token Pub/Sub attaches to a push request."""
    now = int(time.time())
    expires = now + expires_in
    return {
        "iss": issuer,
        "aud": audience,
        "azp": "1234567890",
        "sub": "1234567890",
        "email": email,
        "email_verified": email_verified,
        "iat": min(now, expires - 60),
        "exp": expires,
    }


class TokenAuthority:
    """Signs tokens and serves their certificates over HTTP (see the module docstring)."""

    def __init__(self, *, cache_control: str | None = "public, max-age=3600") -> None:
        self.key = SigningKey("test-key-1")
        self._keys = [self.key]
        self.cache_control = cache_control
        self.fail_with: int | None = None
        self.cert_requests = 0
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- server ------------------------------------------------------------------------------

    @property
    def certs_url(self) -> str:
        if self._server is None:
            raise RuntimeError("TokenAuthority is not started; use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/oauth2/v1/certs"

    def certs(self) -> dict[str, str]:
        with self._lock:
            return {key.kid: key.cert_pem for key in self._keys}

    def __enter__(self) -> TokenAuthority:
        authority = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: nothing stays open

            def do_GET(self) -> None:
                with authority._lock:
                    authority.cert_requests += 1
                    failure = authority.fail_with
                if self.path != "/oauth2/v1/certs":
                    self._reply(404, b"{}", None)
                elif failure is not None:
                    self._reply(failure, b'{"error": "failing on purpose"}', None)
                else:
                    body = json.dumps(authority.certs()).encode()
                    self._reply(200, body, authority.cache_control)

            def _reply(self, status: int, body: bytes, cache_control: str | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if cache_control is not None:
                    self.send_header("Cache-Control", cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="oidc-certs",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    # -- tokens ------------------------------------------------------------------------------

    def mint(
        self,
        audience: str,
        email: str,
        *,
        issuer: str = GOOGLE_ISSUER,
        email_verified: Any = True,
        expires_in: int = 3600,
        kid: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A token signed with the current key (``kid`` overrides the key id in its header)."""
        payload = claims(
            audience, email, issuer=issuer, email_verified=email_verified, expires_in=expires_in
        )
        payload.update(extra or {})
        return self.key.sign(payload, kid=kid)

    def mint_forged(self, audience: str, email: str, *, kid: str | None = None) -> str:
        """A token that claims the current key id (unless ``kid`` says otherwise) but is signed
        with a different key, whose certificate is never served."""
        return SigningKey("forger").sign(claims(audience, email), kid=kid or self.key.kid)

    def rotate(self) -> SigningKey:
        """Start signing with a new key; both keys' certificates are served from now on."""
        with self._lock:
            self.key = SigningKey(f"test-key-{len(self._keys) + 1}")
            self._keys.append(self.key)
        return self.key
