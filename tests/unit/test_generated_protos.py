"""The generated package lrobridge/proto is exactly what protos/ compiles to (never hand-edited)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_matches_a_fresh_compile_of_protos(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {
        p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "lrobridge").rglob("*.py*")
    }
    committed = {
        p.relative_to(ROOT): p.read_bytes()
        for p in (ROOT / "lrobridge" / "proto").rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    stale = sorted(str(p) for p in set(fresh) | set(committed) if fresh.get(p) != committed.get(p))
    assert not stale, f"run `python scripts/gen_protos.py`; stale: {stale}"
