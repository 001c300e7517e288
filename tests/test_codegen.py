"""The committed generated code is exactly what protos/codegen.py writes today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED_ROOT = REPO / "clients" / "python"


def committed_generated_files() -> set[Path]:
    return {
        p.relative_to(GENERATED_ROOT)
        for p in GENERATED_ROOT.glob("contentembed/**/*_pb2*.py*")
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "protos" / "codegen.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.relative_to(tmp_path) for p in tmp_path.glob("contentembed/**/*_pb2*.py*")}
    assert fresh, "codegen wrote nothing"
    assert fresh == committed_generated_files(), "generated files added or removed: run make codegen"
    stale = [
        str(path)
        for path in sorted(fresh)
        if (tmp_path / path).read_bytes() != (GENERATED_ROOT / path).read_bytes()
    ]
    assert not stale, f"stale generated code, run `make codegen`: {stale}"


def test_every_proto_has_generated_code() -> None:
    protos = sorted((REPO / "protos").glob("contentembed/**/*.proto"))
    assert protos
    for proto in protos:
        module = proto.relative_to(REPO / "protos").with_name(proto.stem + "_pb2.py")
        assert (GENERATED_ROOT / module).is_file(), f"no generated module for {proto.name}"
