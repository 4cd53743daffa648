"""Compile protos/ into the generated package lrobridge/proto (never edit its output by hand).

Usage: python scripts/gen_protos.py [--out DIR]
The test tests/unit/test_generated_protos.py regenerates into a temporary folder and fails when
the committed files differ.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import google.rpc.status_pb2
import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(PROTOS.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    # googleapis-common-protos ships its .proto files beside the generated modules.
    common = pathlib.Path(google.rpc.status_pb2.__file__).parent.parent.parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"-I{common}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(f) for f in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p for p in (out / "lrobridge" / "proto").rglob("*") if p.is_file())
    for folder in {p.parent for p in generated} | {out / "lrobridge" / "proto"}:
        (folder / "__init__.py").touch()
    return sorted(p for p in (out / "lrobridge" / "proto").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
