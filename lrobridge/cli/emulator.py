"""Google's emulators as child processes: find one, start it, know when it is ready, stop it.

Two emulators, one lifecycle (:class:`Emulator`): :class:`PubSubEmulator` (used by the test
suite, one per session, and by ``lrobridge dev``) and :class:`FirestoreEmulator` (the test
suite's Firestore store backend). Each is a shell launcher that runs Java; it is started in a
process group of its own (``start_new_session=True``) and :meth:`Emulator.stop` signals the
*whole group* (SIGTERM, then SIGKILL after a grace period), so no Java process outlives it
holding the port.

Readiness is a real HTTP ``GET http://host:port/``, which both emulators answer with ``Ok`` once
they serve requests. Output goes to a log file whose tail is quoted in every start-up error.

Adapter module: it starts processes and speaks HTTP (``urllib.request``), nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from lrobridge.errors import DeadlineExceeded, FailedPrecondition

EMULATOR_BINARY = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
# Where the emulator lives inside any Cloud SDK installation (``gcloud info`` gives the root).
SDK_RELATIVE_BINARY = "platform/pubsub-emulator/bin/cloud-pubsub-emulator"

INSTALL_HINT = (
    "install it with `gcloud components install pubsub-emulator`, or on Debian/Ubuntu with "
    "`apt-get install google-cloud-cli-pubsub-emulator` (it needs Java 11 or later)"
)

FIRESTORE_EMULATOR_BINARY = (
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator"
)
FIRESTORE_SDK_RELATIVE_BINARY = "platform/cloud-firestore-emulator/cloud_firestore_emulator"
FIRESTORE_INSTALL_HINT = (
    "install it with `gcloud components install cloud-firestore-emulator`, or on Debian/Ubuntu "
    "with `apt-get install google-cloud-cli-firestore-emulator` (it needs Java 11 or later)"
)

DEFAULT_STARTUP_TIMEOUT = 60.0
DEFAULT_STOP_GRACE = 5.0
_PORT_TAKEN = "Address already in use"
_PORT_ATTEMPTS = 3  # a port picked by us may be taken by someone else before Java binds it


def find_emulator_binary(
    default: str = EMULATOR_BINARY, *, gcloud: str | None = "gcloud", timeout: float = 30.0
) -> str:
    """The path of the ``cloud-pubsub-emulator`` launcher.

    ``default`` when it exists, otherwise the one inside the Cloud SDK that ``gcloud info``
    reports (when ``gcloud`` is on the PATH). Raises FailedPrecondition saying how to install
    the emulator when neither exists.
    """
    return _find_binary(
        default, SDK_RELATIVE_BINARY, "Pub/Sub", INSTALL_HINT, gcloud=gcloud, timeout=timeout
    )


def find_firestore_emulator_binary(
    default: str = FIRESTORE_EMULATOR_BINARY,
    *,
    gcloud: str | None = "gcloud",
    timeout: float = 30.0,
) -> str:
    """The path of the ``cloud_firestore_emulator`` launcher (found like the Pub/Sub one)."""
    return _find_binary(
        default,
        FIRESTORE_SDK_RELATIVE_BINARY,
        "Firestore",
        FIRESTORE_INSTALL_HINT,
        gcloud=gcloud,
        timeout=timeout,
    )


def _find_binary(
    default: str,
    sdk_relative: str,
    product: str,
    install_hint: str,
    *,
    gcloud: str | None,
    timeout: float,
) -> str:
    if os.access(default, os.X_OK):
        return default
    searched = [default]
    gcloud_path = shutil.which(gcloud) if gcloud else None
    if gcloud_path is not None:
        sdk_root = _gcloud_sdk_root(gcloud_path, timeout)
        if sdk_root:
            candidate = str(Path(sdk_root) / sdk_relative)
            if os.access(candidate, os.X_OK):
                return candidate
            searched.append(candidate)
    raise FailedPrecondition(
        f"the {product} emulator is not installed (looked for {', '.join(searched)}"
        f"{'' if gcloud_path else '; gcloud is not on the PATH'}): {install_hint}"
    )


def _gcloud_sdk_root(gcloud_path: str, timeout: float) -> str:
    try:
        result = subprocess.run(
            [gcloud_path, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` (nothing holds it, not even in TIME_WAIT use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def emulator_answers(host_port: str, *, timeout: float = 1.0) -> bool:
    """Whether an emulator (Pub/Sub or Firestore) at ``host_port`` answers ``GET /`` with
    ``Ok``."""
    try:
        with urllib.request.urlopen(f"http://{host_port}/", timeout=timeout) as response:
            return bool(response.status == 200) and response.read().strip() == b"Ok"
    except (OSError, urllib.error.URLError, ValueError):
        return False


def log_tail(path: Path | None, *, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the group was reused by another user
        return False
    return True


class Emulator:
    """One emulator process group; a context manager (``with PubSubEmulator() as e``).

    ``port=0`` picks a free port. After :meth:`start`, ``host_port`` is the value for the
    emulator's ``*_EMULATOR_HOST`` variable (:attr:`env_var`) and ``start_seconds`` how long
    start-up took. Subclasses say which emulator: its name, how to find and run it.
    """

    product: ClassVar[str] = ""  # in messages: "the {product} emulator"
    env_var: ClassVar[str] = ""  # the variable client libraries read its host:port from
    install_hint: ClassVar[str] = ""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        binary: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self._binary = binary
        self._own_log = log_path is None
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[int, int], Emulator] | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def host_port(self) -> str:
        """``host:port`` as the ``*_EMULATOR_HOST`` variable wants it (the probe address for
        0.0.0.0)."""
        return f"{self._connect_host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id (and process group id) of the emulator, None when not running."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Launch the emulator and block until it answers (or raise, leaving nothing running).

        Raises FailedPrecondition when the binary is missing or the process exits during
        start-up, DeadlineExceeded when it does not answer within ``startup_timeout``; both
        quote the tail of the log.
        """
        if self._process is not None:
            raise FailedPrecondition(f"the {self.product} emulator already runs (pid {self.pid})")
        binary = self._binary or self.find_binary()
        if self._own_log:
            fd, name = tempfile.mkstemp(
                prefix=f"{self.product.replace('/', '').lower()}-emulator-", suffix=".log"
            )
            os.close(fd)
            self.log_path = Path(name)
        started = time.monotonic()
        attempts = _PORT_ATTEMPTS if self.requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            self.port = self.requested_port or free_port(self._connect_host)
            try:
                self._launch(binary)
                self._wait_ready(started)
            except FailedPrecondition:
                address_taken = _PORT_TAKEN in log_tail(self.log_path, lines=200)
                self._terminate()
                if attempt < attempts and address_taken:
                    continue
                self._discard_log()
                raise
            except BaseException:
                self._terminate()
                self._discard_log()
                raise
            break
        self.start_seconds = time.monotonic() - started
        return self

    def _launch(self, binary: str) -> None:
        assert self.log_path is not None
        with open(self.log_path, "wb") as log:  # one log per launch
            try:
                self._process = subprocess.Popen(
                    self.command(binary),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise FailedPrecondition(
                    f"could not run the {self.product} emulator {binary}: {exc}; "
                    f"{self.install_hint}"
                ) from exc
        # Whatever happens to this object, the process group does not outlive the interpreter.
        self._finalizer = weakref.finalize(self, _kill_group, self._process.pid, signal.SIGKILL)

    def _wait_ready(self, started: float) -> None:
        process = self._process
        assert process is not None
        deadline = started + self.startup_timeout
        while True:
            code = process.poll()
            if code is not None:
                raise FailedPrecondition(
                    f"the {self.product} emulator exited with status {code} while starting on "
                    f"{self.host_port}; log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if _PORT_TAKEN in log_tail(self.log_path, lines=200):
                # Java's main thread died but netty's threads keep the process alive: say so now.
                raise FailedPrecondition(
                    f"the {self.product} emulator could not bind {self.host_port}: {_PORT_TAKEN}; "
                    f"choose another port. Log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if emulator_answers(self.host_port, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"the {self.product} emulator did not answer on http://{self.host_port}/ "
                    f"within {self.startup_timeout:.0f}s; log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, SIGKILL after ``stop_grace``); idempotent.

        A log file this object created is deleted; one passed in as ``log_path`` is kept.
        """
        self._terminate()
        self._discard_log()

    def _terminate(self) -> None:
        process = self._process
        if process is None:
            return
        pgid = process.pid  # start_new_session: the leader's pid is the group id
        _kill_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.stop_grace)
        # Java may have children of its own, or the launcher may not have exec'd it: wait for
        # the whole group, then force it.
        if not self._group_gone(pgid, self.stop_grace):
            _kill_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self.stop_grace)
            self._group_gone(pgid, self.stop_grace)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._process = None

    def _group_gone(self, pgid: int, within: float) -> bool:
        """Wait until no process of the group is alive; reaps our own child on the way."""
        assert self._process is not None
        deadline = time.monotonic() + within
        while True:
            self._process.poll()
            if not _kill_group(pgid, 0):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _discard_log(self) -> None:
        if self._own_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    # -- what differs between emulators ----------------------------------------------------

    def find_binary(self) -> str:
        raise NotImplementedError

    def command(self, binary: str) -> list[str]:
        """The argv that runs the emulator on ``self.host``:``self.port``."""
        raise NotImplementedError


class PubSubEmulator(Emulator):
    """The Pub/Sub emulator (``PUBSUB_EMULATOR_HOST``)."""

    product = "Pub/Sub"
    env_var = "PUBSUB_EMULATOR_HOST"
    install_hint = INSTALL_HINT

    def find_binary(self) -> str:
        return find_emulator_binary()

    def command(self, binary: str) -> list[str]:
        return [binary, f"--host={self.host}", f"--port={self.port}"]


class FirestoreEmulator(Emulator):
    """The Firestore emulator in native mode (``FIRESTORE_EMULATOR_HOST``); it keeps every
    project's and database's data apart, so one emulator serves many isolated tests."""

    product = "Firestore"
    env_var = "FIRESTORE_EMULATOR_HOST"
    install_hint = FIRESTORE_INSTALL_HINT

    def find_binary(self) -> str:
        return find_firestore_emulator_binary()

    def command(self, binary: str) -> list[str]:
        return [binary, "start", f"--host={self.host}", f"--port={self.port}"]
