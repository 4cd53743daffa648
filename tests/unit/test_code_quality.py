"""The house rules hold: ruff (lint, the pure-core import bans, formatting) and mypy --strict on
the package. They run in the test suite so CI enforces them with the one test command."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_finds_no_lint_error_and_no_banned_import_in_core_modules() -> None:
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_file_is_formatted_by_ruff() -> None:
    result = _run("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_no_type_error_in_the_package() -> None:
    result = _run("mypy", "--no-incremental", "lrobridge")
    assert result.returncode == 0, result.stdout + result.stderr
