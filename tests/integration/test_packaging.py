"""The wheel built from pyproject.toml ships what users rely on: the PEP 561 marker `py.typed`,
the generated protobuf modules, and the `lrobridge` console script."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_wheel_carries_py_typed_the_generated_protos_and_the_console_script(
    tmp_path: pathlib.Path,
) -> None:
    # Built from a copy, so no build/ or *.egg-info lands in the working tree.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "lrobridge", source / "lrobridge", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path / "dist"
    build = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = out / result.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "lrobridge/py.typed" in names
    assert "lrobridge/proto/v1/watch_pb2.py" in names
    assert "lrobridge = lrobridge.cli.main:main" in scripts
