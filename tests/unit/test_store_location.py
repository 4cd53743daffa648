"""Where state lives by default: one absolute path per user, whatever folder a process runs in."""

from __future__ import annotations

import logging
import os
import pathlib

import pytest

from lrobridge.bridge import Bridge
from lrobridge.config import Settings


def test_the_default_store_is_an_absolute_file_under_xdg_state_home(
    tmp_path: pathlib.Path,
) -> None:
    settings = Settings.from_env({"XDG_STATE_HOME": str(tmp_path / "state")})
    assert settings.store_url == f"sqlite:///{tmp_path / 'state' / 'lrobridge' / 'lrobridge.db'}"


def test_without_xdg_state_home_the_default_is_under_home_local_state(
    tmp_path: pathlib.Path,
) -> None:
    settings = Settings.from_env({"HOME": str(tmp_path)})
    assert settings.store_url == (
        f"sqlite:///{tmp_path / '.local' / 'state' / 'lrobridge' / 'lrobridge.db'}"
    )


def test_a_relative_xdg_state_home_is_ignored_as_the_spec_says(tmp_path: pathlib.Path) -> None:
    settings = Settings.from_env({"HOME": str(tmp_path), "XDG_STATE_HOME": "rel/state"})
    assert settings.store_url.startswith(f"sqlite:///{tmp_path}/.local/state/")


def test_a_relative_store_path_is_resolved_once_against_the_working_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"LROBRIDGE_STORE": "sqlite:///data/x.db"})
    assert settings.store_url == f"sqlite:///{tmp_path / 'data' / 'x.db'}"


def test_scripts_run_from_two_folders_share_one_store_and_the_path_is_logged(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("LROBRIDGE_STORE", "LROBRIDGE_PROJECT", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    expected = tmp_path / "state" / "lrobridge" / "lrobridge.db"
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        bridge = Bridge()
        with caplog.at_level(logging.INFO, logger="lrobridge"):
            paths.append(getattr(bridge.store, "path", None))
        bridge.close()
    assert paths == [str(expected), str(expected)]
    assert expected.exists()
    assert not os.listdir(tmp_path / "a") and not os.listdir(tmp_path / "b")
    logged = [r.getMessage() for r in caplog.records if str(expected) in r.getMessage()]
    assert len(logged) == 2, caplog.text
