"""The emulator launcher's pure parts, without starting Java: finding the binary, the clear
error when it is missing, ports, log tails, and start-up failures of a stand-in process."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from lrobridge.cli.emulator import (
    INSTALL_HINT,
    FirestoreEmulator,
    PubSubEmulator,
    emulator_answers,
    find_emulator_binary,
    find_firestore_emulator_binary,
    free_port,
    log_tail,
    port_is_free,
)
from lrobridge.errors import DeadlineExceeded, FailedPrecondition


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_missing_binary_without_gcloud_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        find_emulator_binary(str(tmp_path / "absent"), gcloud=None)
    message = caught.value.message
    assert str(tmp_path / "absent") in message
    assert "gcloud components install pubsub-emulator" in message
    assert "google-cloud-cli-pubsub-emulator" in message


def test_a_missing_firestore_emulator_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        find_firestore_emulator_binary(str(tmp_path / "absent"), gcloud=None)
    message = caught.value.message
    assert message.startswith("the Firestore emulator is not installed")
    assert "gcloud components install cloud-firestore-emulator" in message
    assert "google-cloud-cli-firestore-emulator" in message


def test_the_firestore_emulator_runs_its_launchers_start_command_on_the_chosen_address(
    tmp_path: Path,
) -> None:
    argv_file = tmp_path / "argv"
    binary = _script(tmp_path / "emu", f'echo "$@" > {argv_file}; exit 4\n')
    emulator = FirestoreEmulator(binary=binary, port=free_port(), startup_timeout=10)
    with pytest.raises(FailedPrecondition, match="the Firestore emulator exited with status 4"):
        emulator.start()
    assert argv_file.read_text().split() == [
        "start",
        "--host=127.0.0.1",
        f"--port={emulator.port}",
    ]
    assert FirestoreEmulator.env_var == "FIRESTORE_EMULATOR_HOST"


def test_missing_binary_is_looked_up_in_the_sdk_root_that_gcloud_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk = tmp_path / "sdk"
    binary = sdk / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    binary.parent.mkdir(parents=True)
    _script(binary, "exit 0\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "gcloud", f"echo {sdk}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    assert find_emulator_binary(str(tmp_path / "absent")) == str(binary)


def test_gcloud_without_the_emulator_component_still_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "gcloud", f"echo {tmp_path / 'empty-sdk'}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    with pytest.raises(FailedPrecondition, match="pubsub-emulator") as caught:
        find_emulator_binary(str(tmp_path / "absent"))
    assert str(tmp_path / "empty-sdk") in caught.value.message


def test_start_with_a_missing_binary_raises_before_launching_anything(tmp_path: Path) -> None:
    emulator = PubSubEmulator(binary=str(tmp_path / "absent"))
    with pytest.raises(FailedPrecondition, match="could not run") as caught:
        emulator.start()
    assert INSTALL_HINT in caught.value.message
    assert emulator.pid is None and not emulator.running
    assert emulator.log_path is None  # the log file it made for the attempt is gone


def test_a_process_that_dies_during_start_up_fails_with_its_log_tail(tmp_path: Path) -> None:
    binary = _script(tmp_path / "emu", "echo 'java: something broke' ; exit 3\n")
    emulator = PubSubEmulator(binary=binary, startup_timeout=10)
    with pytest.raises(FailedPrecondition) as caught:
        emulator.start()
    assert "exited with status 3" in caught.value.message
    assert "java: something broke" in caught.value.message
    assert not emulator.running


def test_a_process_that_never_answers_times_out_and_its_group_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The launcher leaves a child behind, like gcloud leaves Java: both must die.
    binary = _script(tmp_path / "emu", f"echo starting; sleep 60 & echo $! > {pid_file}; wait\n")
    emulator = PubSubEmulator(binary=binary, startup_timeout=1, stop_grace=2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        emulator.start()
    assert time.monotonic() - started < 10
    assert "did not answer" in caught.value.message
    assert "starting" in caught.value.message
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for init to reap it no longer runs.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_stop_without_start_is_a_no_op() -> None:
    emulator = PubSubEmulator()
    emulator.stop()
    emulator.stop()
    assert emulator.pid is None


def test_host_port_uses_loopback_when_binding_every_interface() -> None:
    assert PubSubEmulator(host="0.0.0.0", port=8085).host_port == "127.0.0.1:8085"
    assert PubSubEmulator(port=8085).host_port == "127.0.0.1:8085"


def test_free_port_is_bindable_and_nothing_answers_there() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert port_is_free("127.0.0.1", port)
    assert not emulator_answers(f"127.0.0.1:{port}", timeout=0.5)


def test_log_tail_returns_the_last_lines_or_nothing(tmp_path: Path) -> None:
    log = tmp_path / "emulator.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, lines=2) == "line 98\nline 99"
    assert log_tail(tmp_path / "absent") == ""
    assert log_tail(None) == ""


def test_a_port_already_in_use_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    # Like Java: report the bind failure, then hang instead of exiting.
    binary = _script(
        tmp_path / "emu", "echo 'java.net.BindException: Address already in use'; sleep 60\n"
    )
    emulator = PubSubEmulator(binary=binary, port=free_port(), startup_timeout=30)
    started = time.monotonic()
    with pytest.raises(FailedPrecondition, match="could not bind"):
        emulator.start()
    assert time.monotonic() - started < 10
    assert not emulator.running


def test_a_picked_port_that_is_taken_meanwhile_is_retried_on_another_port(tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"
    # Each launch fails as "in use"; with port=0 the launcher tries a few free ports, then stops.
    binary = _script(
        tmp_path / "emu",
        f"echo \"$2\" >> {attempts}; echo 'BindException: Address already in use'; sleep 60\n",
    )
    emulator = PubSubEmulator(binary=binary, startup_timeout=30)
    with pytest.raises(FailedPrecondition, match="could not bind"):
        emulator.start()
    assert len(attempts.read_text().splitlines()) == 3
    assert not emulator.running
