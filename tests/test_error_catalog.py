"""docs/errors.md lists every ErrorInfo reason the code can send, and nothing else.

Reasons are found with ``ast``: the ``reason=`` argument of every call in services/ and
clients/ (string literals, module-level string constants, both branches of a conditional,
and the f-strings of common/metadata.py expanded over StructKind), plus the default reason
(the code name) of every domain error raised without ``reason=``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "services", REPO / "clients"]
ERRORS_PY = REPO / "services" / "common" / "src" / "contentembed" / "services" / "common" / "errors.py"
CATALOG = REPO / "docs" / "errors.md"
# reason= expressions that pass a reason along rather than make one up.
PASSTHROUGH = {"reason", "error.reason", "failure.reason"}
METADATA_PY = ERRORS_PY.with_name("metadata.py")


def struct_kinds() -> tuple[str, ...]:
    """The values of metadata.py's ``StructKind = Literal[...]``."""
    for node in ast.parse(METADATA_PY.read_text()).body:
        if (isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "StructKind"
                and isinstance(node.value, ast.Subscript)):
            kinds = ast.literal_eval(node.value.slice)
            return tuple(kinds) if isinstance(kinds, tuple) else (kinds,)
    raise AssertionError("metadata.py no longer defines StructKind = Literal[...]")


# Placeholders of reason f-strings and the values they take.
PLACEHOLDERS = {"kind": struct_kinds(), "self.kind": struct_kinds()}


def source_files() -> list[Path]:
    return sorted(
        p for root in SOURCES for p in root.rglob("*.py") if "_pb2" not in p.name
    )


def error_class_codes() -> dict[str, str]:
    """Domain error class -> its canonical code (errors.py's ``code = "..."``)."""
    codes: dict[str, str] = {}
    for node in ast.parse(ERRORS_PY.read_text()).body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (isinstance(stmt, ast.AnnAssign | ast.Assign)
                        and isinstance(stmt.value, ast.Constant)
                        and "code" in ast.unparse(stmt)):
                    codes[node.name] = stmt.value.value
    assert {"ContentEmbedError", "InvalidArgument", "Unavailable"} <= codes.keys(), codes
    return codes


def string_constants(trees: dict[Path, ast.Module]) -> dict[str, str]:
    """Module-level ``NAME = "VALUE"`` assignments of every file (reasons kept in constants)."""
    found: dict[str, str] = {}
    for tree in trees.values():
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                found[node.targets[0].id] = node.value.value
    return found


def resolve(expr: ast.expr, constants: dict[str, str], where: str) -> set[str]:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.Name) and expr.id in constants:
        return {constants[expr.id]}
    if isinstance(expr, ast.IfExp):
        return resolve(expr.body, constants, where) | resolve(expr.orelse, constants, where)
    if isinstance(expr, ast.JoinedStr):
        values = {""}
        for part in expr.values:
            if isinstance(part, ast.Constant):
                values = {v + part.value for v in values}
            else:
                key = ast.unparse(part.value)  # type: ignore[attr-defined]
                assert key in PLACEHOLDERS, f"{where}: reason f-string with unknown {{{key}}}"
                values = {v + sub for v in values for sub in PLACEHOLDERS[key]}
        return values
    raise AssertionError(f"{where}: cannot tell which reason `{ast.unparse(expr)}` is")


def reasons_in_code() -> dict[str, list[str]]:
    """Reason -> where it is raised."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in source_files()}
    constants = string_constants(trees)
    codes = error_class_codes()
    found: dict[str, list[str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            reason = next((k.value for k in node.keywords if k.arg == "reason"), None)
            if reason is not None:
                if ast.unparse(reason) in PASSTHROUGH:
                    continue
                values = resolve(reason, constants, where)
            elif isinstance(node.func, ast.Name) and node.func.id in codes:
                values = {codes[node.func.id]}  # no reason given: the code name is the reason
            else:
                continue
            for value in values:
                found.setdefault(value, []).append(where)
    return found


def reasons_in_catalog() -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", CATALOG.read_text(), re.MULTILINE))


def test_the_extractor_finds_reasons_of_every_kind() -> None:
    found = reasons_in_code()
    # A literal, a module constant, a conditional, an f-string, and a default reason.
    assert {"TOP_K_OUT_OF_RANGE", "VERSIONS_CHANGED", "VERSION_NOT_LOADED",
            "FILTER_TOO_DEEP", "METADATA_TOO_LARGE", "INTERNAL"} <= found.keys()
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", reason) for reason in found), sorted(found)


def test_every_reason_in_the_code_is_documented() -> None:
    missing = {r: w for r, w in reasons_in_code().items() if r not in reasons_in_catalog()}
    assert not missing, "reasons missing from docs/errors.md:\n" + "\n".join(
        f"  {reason}  (raised at {', '.join(where[:3])})" for reason, where in sorted(missing.items())
    )


def test_every_documented_reason_is_still_raised() -> None:
    stale = sorted(reasons_in_catalog() - reasons_in_code().keys())
    assert not stale, f"docs/errors.md documents reasons the code no longer raises: {stale}"
