"""Which optional packages the local services need, checked before ``up``/``demo`` start
them: a missing extra is one clear message, not children dying in their logs."""

from __future__ import annotations

import importlib.util

ALL_HINT = "pip install 'contentembed[all]'"

# service -> (extra, top-level modules its process imports at start)
SERVICE_REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gateway": (
        "gateway",
        ("contentembed.services.gateway", "grpc_reflection", "prometheus_client",
         "pydantic_settings", "numpy", "opentelemetry.sdk"),
    ),
    "index": ("index", ("contentembed.services.index", "hnswlib", "numpy")),
    "text-encoder": (
        "text-encoder",
        ("contentembed.services.text_encoder", "torch", "transformers", "sentence_transformers"),
    ),
    "image-encoder": ("image-encoder", ("contentembed.services.image_encoder", "PIL")),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent missing, or blocked in sys.modules
        return False


def missing_service_extras() -> dict[str, list[str]]:
    """Extra name -> modules it provides that cannot be imported here (empty: all there)."""
    missing: dict[str, list[str]] = {}
    for extra, modules in SERVICE_REQUIREMENTS.values():
        absent = [m for m in modules if not _importable(m)]
        if absent:
            missing.setdefault(extra, []).extend(absent)
    return missing


def missing_services_message(command: str) -> str | None:
    """One line naming the missing extras for ``command``, or None when all are there."""
    missing = missing_service_extras()
    if not missing:
        return None
    parts = "; ".join(f"contentembed[{extra}] ({', '.join(mods)})" for extra, mods in missing.items())
    return f"`contentembed {command}` runs the services locally and needs {parts}: {ALL_HINT}"
