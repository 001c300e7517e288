"""Writes the Python code generated from protos/ -- the only writer of *_pb2*.py.

Usage: python protos/codegen.py [--out DIR]   (default: clients/python)

The output mirrors the proto packages (contentembed/<area>/v1/), so generated
imports such as ``from contentembed.common.v1 import types_pb2`` resolve through
the ``contentembed`` namespace package without sys.path tricks.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT / "clients" / "python"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("contentembed/**/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Generates into out_dir and returns the files written, relative to it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known_protos = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known_protos}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return sorted(p.relative_to(out_dir) for p in out_dir.glob("contentembed/**/*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
