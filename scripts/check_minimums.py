"""Check that every runtime dependency installed here is at the minimum pyproject.toml declares.

Run by .ci/lowest in its environment built from constraints-lowest.txt: if a declared lower
bound could not be installed with the others, the lowest-direct resolution would have picked
a higher release, and this says which. Exit status 1 on any difference.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def declared_minimums(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> dict[str, Version]:
    """name -> the version of each runtime dependency's ``>=`` bound (every one must have one)."""
    minimums = {}
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        if len(bounds) != 1:
            raise SystemExit(f"{line!r}: give every runtime dependency one `>=` lower bound")
        minimums[canonicalize_name(requirement.name)] = bounds[0]
    return minimums


def pins(path: pathlib.Path) -> dict[str, Version]:
    """name -> version of each ``name==version`` line of a constraints file."""
    pinned = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"{path.name}: {raw!r} is not pinned with ==")
            pinned[canonicalize_name(name.split("[")[0])] = Version(version)
    return pinned


def main() -> int:
    wrong = []
    for name, minimum in declared_minimums().items():
        installed = Version(importlib.metadata.version(name))
        if installed != minimum:
            wrong.append(f"{name}: declared >={minimum}, installed {installed}")
    if wrong:
        print("lower bounds that do not install together:", *wrong, sep="\n  ", file=sys.stderr)
        return 1
    print(f"every runtime dependency ({len(declared_minimums())}) is at its declared minimum")
    return 0


if __name__ == "__main__":
    sys.exit(main())
