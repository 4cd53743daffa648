"""The Dockerfile, checked against the code (Docker cannot build here; the command line itself is
run for real by tests/integration/test_container_command.py)."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from lrobridge.cli.main import build_parser
from lrobridge.config import ENVIRONMENT, parse_duration
from tests.support.container import ROOT, command_argv, parse_dockerfile

IMAGE = parse_dockerfile()
ARGV = command_argv(IMAGE.command)


def option(name: str) -> str:
    assert name in ARGV, f"the Dockerfile's command has no {name}"
    return ARGV[ARGV.index(name) + 1]


def test_every_stage_is_a_slim_python_image_the_package_supports() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())  # type: ignore[union-attr]
    assert IMAGE.base_images
    for base in IMAGE.base_images:
        match = re.fullmatch(r"python:(\d+)\.(\d+)-slim", base)
        assert match, f"{base} is not a python:X.Y-slim image"
        assert tuple(int(p) for p in match.groups()) >= minimum


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    uid, _, gid = IMAGE.user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {IMAGE.user!r}"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_the_image_port_is_the_apps_default_port_and_the_one_it_exposes() -> None:
    assert IMAGE.env["PORT"] == ENVIRONMENT["PORT"][0]
    assert IMAGE.exposed == [IMAGE.env["PORT"]]


def test_the_image_logs_json_for_cloud_logging() -> None:
    assert IMAGE.env["LROBRIDGE_LOG_FORMAT"] == "json"
    assert set(IMAGE.env) - {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"} <= set(ENVIRONMENT)


def test_the_command_is_lrobridge_serve_as_pid_1_on_all_interfaces_and_the_port() -> None:
    assert IMAGE.command.startswith("exec lrobridge serve ")  # exec: it gets SIGTERM itself
    assert ARGV[:2] == ["lrobridge", "serve"]
    assert option("--host") == "0.0.0.0"
    assert "--port" not in ARGV  # $PORT, which Cloud Run sets, is the default
    assert int(option("--threads")) >= 1
    # Requests in flight finish before Cloud Run's SIGKILL, 10 s after SIGTERM.
    assert 0 < parse_duration(option("--graceful-timeout")) < 10


def test_the_command_parses_and_serves_the_wsgi_app_with_the_watcher() -> None:
    args = build_parser().parse_args(ARGV[1:])
    assert args.func.__name__ == "cmd_serve"
    assert args.watcher  # poller mode: one process does everything
    module, _, attribute = args.app.partition(":")
    assert (module, attribute) == ("lrobridge.wsgi", "app")
    assert (ROOT / "lrobridge" / "wsgi.py").is_file()


def test_what_the_image_copies_exists_and_is_not_docker_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert IMAGE.copied
    for source in IMAGE.copied:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    assert "tests" in ignored and ".git" in ignored
