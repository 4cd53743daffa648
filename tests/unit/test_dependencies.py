"""Dependency pins agree with pyproject.toml: constraints-lowest.txt (what .ci/lowest installs)
has every direct dependency at its declared minimum, constraints.txt (what the image installs)
stays within the declared ranges, and the Dockerfile installs from constraints.txt."""

from __future__ import annotations

import importlib.util
import pathlib
import shlex
import tomllib
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.container import ROOT, parse_dockerfile

REGENERATE = "regenerate with `bash scripts/update_constraints.sh`"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_minimums", ROOT / "scripts" / "check_minimums.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = _checker()
REQUIREMENTS = [
    Requirement(line)
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
]


def test_the_lowest_resolution_installs_every_direct_dependency_at_its_declared_minimum() -> None:
    """If a minimum could not be installed with the others (google-api-core 2.19 needs
    protobuf < 5 while protobuf >= 7.35 is required), the lowest-direct resolution picks a
    higher release than declared and this names it."""
    minimums = CHECK.declared_minimums()
    lowest = CHECK.pins(ROOT / "constraints-lowest.txt")
    wrong = {
        name: (str(v), str(lowest.get(name)))
        for name, v in minimums.items()
        if lowest.get(name) != v
    }
    assert wrong == {}, f"declared minimum vs lowest installable; {REGENERATE}"


def test_the_image_constraints_pin_every_dependency_within_the_declared_ranges() -> None:
    pinned = CHECK.pins(ROOT / "constraints.txt")
    outside = {
        r.name: str(pinned.get(canonicalize_name(r.name)))
        for r in REQUIREMENTS
        if pinned.get(canonicalize_name(r.name)) not in r.specifier
    }
    assert outside == {}, f"pins missing or outside pyproject's ranges; {REGENERATE}"
    for path in ("constraints.txt", "constraints-lowest.txt"):
        header = (ROOT / path).read_text().splitlines()[:2]
        assert "uv pip compile pyproject.toml" in header[1], f"{path} says how it was made"


def test_the_dockerfile_installs_every_dependency_from_the_constraints_file() -> None:
    image = parse_dockerfile()
    assert "constraints.txt" in image.copied
    installs = [
        words
        for run in image.runs
        for command in run.split("&&")
        if (words := shlex.split(command))[:2] in (["pip", "wheel"], ["pip", "install"])
    ]
    assert installs, "the Dockerfile installs nothing with pip"
    for words in installs:
        assert "-c" in words, f"{' '.join(words)}: no -c constraints.txt"
        assert pathlib.Path(words[words.index("-c") + 1]).name == "constraints.txt"
