"""A local Cloud Tasks: the ``gcloud-tasks-emulator`` package's server, run in this process.

For ``lrobridge dev --tasks`` and the integration tests. The package (PyPI
``gcloud-tasks-emulator``) serves the Cloud Tasks gRPC API and dispatches HTTP tasks at their
``schedule_time``; what it does not do is listed in docs/deploy.md ("Cloud Tasks emulator").
It pins ``protobuf<5`` although it runs on the protobuf lrobridge needs, so it is installed
without its dependencies (``pip install --no-deps gcloud-tasks-emulator``; ``.ci/run`` does).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from lrobridge.errors import FailedPrecondition

INSTALL_HINT = (
    "the Cloud Tasks emulator is not installed: pip install --no-deps gcloud-tasks-emulator "
    "(it pins protobuf<5, which it does not need)"
)
START_TIMEOUT = 10.0


class TasksEmulator:
    """The emulator on 127.0.0.1:``port`` with ``queues`` (full queue names) created."""

    def __init__(self, *, port: int, queues: Iterable[str]) -> None:
        self.port = port
        self.queues = list(queues)
        self._server: Any = None

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> TasksEmulator:
        try:
            from gcloud_tasks_emulator.server import create_server
        except ImportError:
            raise FailedPrecondition(INSTALL_HINT) from None
        # It logs every dispatch at INFO; its warnings and errors stay visible.
        logging.getLogger("gcloud-tasks-emulator").setLevel(logging.WARNING)
        self._server = create_server("127.0.0.1", self.port, default_queue_names=self.queues)
        self._server.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            if time.monotonic() > deadline:
                self.close()
                raise FailedPrecondition(f"the Cloud Tasks emulator did not listen on {self.port}")
            time.sleep(0.05)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
