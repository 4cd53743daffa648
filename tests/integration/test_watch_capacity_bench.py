"""The capacity benchmark's smoke run: ``bench/watch_capacity.py --quick`` measures every side
(three server kinds and the api-core baseline) and prints every figure and ratio for each.
Figures are checked for presence and form only, never for their values."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import pytest

from bench.watch_capacity import FIGURES
from lrobridge.cli.emulator import find_emulator_binary
from lrobridge.errors import FailedPrecondition

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
SIDES = ("lrobridge get", "lrobridge wait", "lrobridge list", "baseline")


def test_the_quick_capacity_run_prints_every_figure_for_every_side() -> None:
    try:
        find_emulator_binary()
    except FailedPrecondition as exc:
        pytest.skip(exc.message)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PUBSUB_EMULATOR_HOST", None)  # it starts an emulator of its own
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(ROOT / "bench" / "watch_capacity.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("side "))
    assert all(figure in header for figure in FIGURES)
    for side in SIDES:
        (row,) = [line for line in lines if line.startswith(f"{side} ") and "x" not in line]
        fields = row[len(side) :].split()
        assert len(fields) == 2 + len(FIGURES), row
        values = [float(field) for field in fields]
        assert values[0] > 0 and values[1] == values[0], f"{side}: not every completion seen"
        assert all(math.isfinite(v) for v in values), row
    for side in SIDES[:-1]:
        (ratios,) = [line for line in lines if line.startswith(f"{side} ") and "CPU/op x" in line]
        for figure in ("CPU/op x", "RSS/op x", "lag p50 x", "lag p99 x"):
            assert figure in ratios, ratios
