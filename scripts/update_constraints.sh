#!/usr/bin/env bash
# Regenerate the two pinned dependency sets from pyproject.toml (run after changing its
# dependencies; tests/unit/test_dependencies.py fails until both agree with it):
#   constraints.txt         newest releases within the ranges, for the container image
#                           (Python 3.12 on Linux, as the Dockerfile's base image)
#   constraints-lowest.txt  the lowest-direct resolution: every direct dependency at its declared
#                           minimum (Python 3.11, the oldest supported), run by .ci/lowest
# Needs uv (`python -m pip install uv`) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile -q pyproject.toml --python-version 3.12 --python-platform linux \
    -o constraints.txt
uv pip compile -q pyproject.toml --resolution lowest-direct --python-version 3.11 \
    --python-platform linux -o constraints-lowest.txt
