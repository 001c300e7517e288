"""Import contracts between the layers, checked with ``ast`` (no import is executed).

(a) Domain modules never import the transport: no ``grpc``, ``google.protobuf``,
    ``google.rpc`` and no generated ``*_pb2`` code, directly or through another module of
    this repo. Domain: DOMAIN_MODULES below; in the gateway, every module other than the edge
    (``service.py``, ``__main__.py``), the adapter (``downstream.py``) and ``metrics.py``.
(b) ``contentembed.services.*`` never imports ``contentembed.client``, ``.cli`` or
    ``.pipeline`` (the SDK depends on the services' protos, never the other way round).
(c) ``contentembed.client`` never imports ``contentembed.services``.
(d) A service imports another service only through ``contentembed.services.common``
    (and ``common`` imports no service).

The gateway's domain reaches its transport only through ``gateway/ports.py``: its gRPC
adapter (``downstream.py``) implements those ports, and the edge (``service.py``) wires them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Directories that hold the ``contentembed`` namespace package.
SOURCE_ROOTS = [REPO / "clients" / "python", *sorted((REPO / "services").glob("*/src"))]

SERVICES = "contentembed.services"
COMMON = "contentembed.services.common"
GATEWAY = "contentembed.services.gateway"
DOMAIN_MODULES = {
    f"contentembed.services.index.{name}"
    for name in ("collection", "persistence", "store", "catalog", "version_log", "bundles",
                 "shard", "dense", "snapshot", "lexical", "payload", "cost", "lease",
                 "replication", "primary", "replica_group")
} | {
    f"{COMMON}.{name}"
    for name in ("batching", "models", "spaces", "vectors", "validation", "errors",
                 "sharding", "rwlock", "metadata", "digests")
} | {
    f"contentembed.services.{encoder}.{name}"
    for encoder, name in (("text_encoder", "backends"), ("text_encoder", "tfidf"),
                          ("image_encoder", "backends"), ("image_encoder", "decoding"))
}
# Gateway modules that are not domain: the edge, the adapter to the downstream services,
# and the Prometheus metrics.
GATEWAY_NOT_DOMAIN = {f"{GATEWAY}.{name}" for name in ("service", "__main__", "downstream", "metrics")}
TRANSPORT = ("grpc", "google.protobuf", "google.rpc")



def module_name(path: Path) -> str:
    for root in SOURCE_ROOTS:
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise AssertionError(f"{path} is under no source root")


@cache
def modules() -> dict[str, Path]:
    found = {
        module_name(path): path
        for root in SOURCE_ROOTS
        for path in root.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert "contentembed.services.gateway.ports" in found and "contentembed.client.sync" in found
    return found


def is_generated(name: str) -> bool:
    return name.rsplit(".", 1)[-1].endswith(("_pb2", "_pb2_grpc"))


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every module ``name`` imports anywhere in its body (functions included): this repo's
    modules resolved to the deepest module, others as written."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules() or is_generated(child) else base)
    return frozenset(found)


def is_transport(name: str) -> bool:
    return is_generated(name) or any(name == t or name.startswith(t + ".") for t in TRANSPORT)


def transport_chains(start: str) -> Iterator[list[str]]:
    """Import chains from ``start`` to a transport module, one per transport module reached
    (the shortest, breadth first), through this repo's modules."""
    seen = {start}
    frontier = [[start]]
    while frontier:
        following = []
        for chain in frontier:
            for imported in sorted(imports_of(chain[-1])):
                if is_transport(imported):
                    yield [*chain, imported]
                elif imported in modules() and imported not in seen:
                    seen.add(imported)
                    following.append([*chain, imported])
        frontier = following


def domain_modules() -> list[str]:
    gateway = {m for m in modules() if m.startswith(GATEWAY + ".") and m not in GATEWAY_NOT_DOMAIN}
    missing = DOMAIN_MODULES - modules().keys()
    assert not missing, f"domain modules that no longer exist (update DOMAIN_MODULES): {missing}"
    return sorted(DOMAIN_MODULES | gateway)


def edges(chain: list[str]) -> set[tuple[str, str]]:
    return set(zip(chain, chain[1:]))


def domain_violations(known: set[tuple[str, str]]) -> list[str]:
    """Domain modules that reach the transport, as import chains, except through ``known``."""
    return [
        " -> ".join(chain)
        for module in domain_modules()
        for chain in transport_chains(module)
        if not edges(chain) & known
    ]


def edge_violations(rule) -> list[str]:
    return sorted(
        f"{module} imports {imported}"
        for module in modules()
        for imported in imports_of(module)
        if rule(module, imported)
    )


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def service_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if in_package(name, SERVICES) and len(parts) > 2 else None


def imports_sdk(module: str, imported: str) -> bool:
    return in_package(module, SERVICES) and any(
        in_package(imported, f"contentembed.{part}") for part in ("client", "cli", "pipeline")
    )


# -- (a) domain modules and the transport ------------------------------------------------


def test_domain_modules_do_not_import_the_transport() -> None:
    violations = domain_violations(set())
    assert not violations, "domain modules that import grpc/protobuf/_pb2:\n  " + "\n  ".join(violations)


def test_the_transport_check_sees_the_adapter() -> None:
    """The checker itself: the edge and the adapter do reach grpc and generated code."""
    for module in (f"{GATEWAY}.service", f"{GATEWAY}.downstream", "contentembed.services.index.service"):
        reached = {chain[-1] for chain in transport_chains(module)}
        assert "grpc" in reached and any(is_generated(m) for m in reached), (module, reached)


# -- (b) services and the SDK -------------------------------------------------------------


def test_services_do_not_import_the_sdk() -> None:
    violations = edge_violations(imports_sdk)
    assert not violations, "services that import the SDK, CLI or pipeline:\n  " + "\n  ".join(violations)


# -- (c) the SDK and the services -------------------------------------------------------


def test_the_client_does_not_import_the_services() -> None:
    violations = edge_violations(
        lambda module, imported: in_package(module, "contentembed.client") and in_package(imported, SERVICES)
    )
    assert not violations, "contentembed.client imports services:\n  " + "\n  ".join(violations)


# -- (d) services import each other only through common -----------------------------------


def test_services_import_each_other_only_through_common() -> None:
    def crosses(module: str, imported: str) -> bool:
        mine, theirs = service_of(module), service_of(imported)
        return mine is not None and theirs is not None and theirs not in (mine, "common")

    violations = edge_violations(crosses)
    assert not violations, "imports between services (go through common):\n  " + "\n  ".join(violations)
