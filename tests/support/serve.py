"""``lrobridge serve`` as a real process, and raw HTTP/1.1 over a socket to it.

:class:`Serve` starts ``python -m lrobridge.cli serve`` on 127.0.0.1 in its own process group,
waits for ``/healthz``, and stops it with SIGTERM (SIGKILL after 15 s); :func:`raw_request`
sends bytes exactly as written (malformed chunked bodies, short bodies) and reads the answer.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import requests


class Serve:
    """``python -m lrobridge.cli serve`` in its own process group."""

    def __init__(self, env: dict[str, str], port: int, log: pathlib.Path, *extra_args: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "lrobridge.cli", "serve", "--host", "127.0.0.1"),
                *("--port", str(port), "--threads", "8", *extra_args),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or still starting
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"lrobridge serve did not start; see {log}")
            time.sleep(0.1)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def raw_request(
    port: int, data: bytes | list[bytes], *, half_close: bool = True, timeout: float = 30.0
) -> tuple[int, bytes]:
    """Send ``data`` (pieces sent one by one) to 127.0.0.1:``port``, optionally shut down the
    writing side, and read the answer until the server closes: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for piece in data if isinstance(data, list) else [data]:
            sock.sendall(piece)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            if sep and _complete(head, body):
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head:
        raise AssertionError("the server closed the connection without answering")
    return int(head.split(b" ", 2)[1]), body


def _complete(head: bytes, body: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
