"""The proto contract: every RPC and message is documented, and `buf breaking` catches a
breaking change (the Makefile's lint-protos target runs it against the main branch)."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "protos"

# FileDescriptorProto / DescriptorProto / ServiceDescriptorProto field numbers, the
# elements of a SourceCodeInfo.Location path.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4
_METHOD = 2


def descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    """Our .proto files compiled by protoc (grpc_tools, as codegen does) with comments."""
    out = tmp_path / "protos.pb"
    protos = sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.glob("contentembed/**/*.proto"))
    assert protos
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{resources.files('grpc_tools') / '_proto'}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *map(str, protos),
    ]
    assert protoc.main(args) == 0, "protoc failed"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return fds


def undocumented(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Every service, rpc, message and enum, and every field of a message a caller sends
    (an rpc's request and the messages it contains, transitively), without a leading
    comment."""
    files = {f.name: f for f in fds.file}
    messages: dict[str, tuple[str, tuple[int, ...], descriptor_pb2.DescriptorProto]] = {}
    enums: dict[str, tuple[str, tuple[int, ...]]] = {}

    def walk(fname: str, prefix: str, path: tuple[int, ...], msg: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{msg.name}"
        messages[name] = (fname, path, msg)
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                walk(fname, name, (*path, _NESTED, i), nested)
        for i, enum in enumerate(msg.enum_type):
            enums[f"{name}.{enum.name}"] = (fname, (*path, _NESTED_ENUM, i))

    for f in files.values():
        for i, msg in enumerate(f.message_type):
            walk(f.name, f".{f.package}", (_MESSAGE, i), msg)
        for i, enum in enumerate(f.enum_type):
            enums[f".{f.package}.{enum.name}"] = (f.name, (_ENUM, i))

    def comment(fname: str, path: tuple[int, ...]) -> str:
        for loc in files[fname].source_code_info.location:
            if tuple(loc.path) == path:
                return loc.leading_comments.strip()
        return ""

    missing: list[str] = []
    request_types: list[str] = []
    for f in files.values():
        for i, service in enumerate(f.service):
            sname = f"{f.package}.{service.name}"
            if not comment(f.name, (_SERVICE, i)):
                missing.append(f"{f.name}: service {sname}")
            for j, method in enumerate(service.method):
                request_types.append(method.input_type)
                if not comment(f.name, (_SERVICE, i, _METHOD, j)):
                    missing.append(f"{f.name}: rpc {sname}.{method.name}")
    for name, (fname, path, _msg) in messages.items():
        if not comment(fname, path):
            missing.append(f"{fname}: message {name[1:]}")
    for name, (fname, path) in enums.items():
        if not comment(fname, path):
            missing.append(f"{fname}: enum {name[1:]}")

    # Fields of what a caller sends: the requests and every message they contain.
    sent: set[str] = set()
    todo = list(request_types)
    while todo:
        name = todo.pop()
        if name in sent or name not in messages:  # google.protobuf.* is not ours to document
            continue
        sent.add(name)
        fname, path, msg = messages[name]
        for k, field in enumerate(msg.field):
            if field.type_name:
                todo.append(field.type_name)
            if not comment(fname, (*path, _FIELD, k)):
                missing.append(f"{fname}: field {name[1:]}.{field.name}")
    return sorted(set(missing))


def test_every_rpc_message_enum_and_request_field_is_documented(tmp_path: Path) -> None:
    missing = undocumented(descriptor_set(tmp_path))
    assert not missing, (
        f"{len(missing)} proto elements lack a leading comment:\n  " + "\n  ".join(missing)
    )


def test_the_checker_sees_a_missing_comment(tmp_path: Path) -> None:
    fds = descriptor_set(tmp_path)
    proto = next(f for f in fds.file if f.name.endswith("search_service.proto"))
    for loc in proto.source_code_info.location:
        if list(loc.path) == [_SERVICE, 0]:
            loc.ClearField("leading_comments")
    assert "contentembed/search/v1/search_service.proto: service contentembed.search.v1.SearchService" in (
        undocumented(fds)
    )


def buf_binary() -> str | None:
    for candidate in (os.environ.get("BUF"), str(REPO / "node_modules" / ".bin" / "buf"), shutil.which("buf")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_buf_breaking_catches_a_removed_field(tmp_path: Path) -> None:
    """A copy of protos/ with SearchRequest.exact removed, checked against the original
    with the repo's buf.yaml, is a breaking change; the unchanged copy is not."""
    buf = buf_binary()
    if buf is None:
        if os.environ.get("CI"):
            pytest.fail("buf not found under CI: run `make setup` (npm ci installs it)")
        pytest.skip("buf not installed (make setup installs it into node_modules/.bin)")
    changed = tmp_path / "changed"
    shutil.copytree(PROTO_ROOT, changed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))

    def breaking() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [buf, "breaking", str(changed), "--against", str(PROTO_ROOT)],
            capture_output=True, text=True, timeout=120, check=False,
        )

    same = breaking()
    assert same.returncode == 0, same.stdout + same.stderr

    search = changed / "contentembed" / "search" / "v1" / "search_service.proto"
    text = search.read_text()
    assert "  bool exact = 8;\n" in text
    search.write_text(text.replace("  bool exact = 8;\n", ""))
    broken = breaking()
    assert broken.returncode != 0
    assert 'Previously present field "8" with name "exact" on message "SearchRequest"' in broken.stdout
