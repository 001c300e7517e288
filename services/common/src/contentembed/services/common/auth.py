"""API keys and TLS for the shared runtime.

Keys travel in call metadata (``x-api-key: KEY`` or ``authorization: Bearer KEY``). Every
service names the role each of its methods needs; the runtime answers UNAUTHENTICATED for
a missing or unknown key and PERMISSION_DENIED for a key without the role, *before* the
request body is deserialised. With no keys configured the check is off (local use).
Services calling other services present ``--downstream-api-key``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc

from contentembed.services.common.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

SEARCH_ROLE = "search"
ADMIN_ROLE = "admin"
# What each role may do: an admin key is also a search key.
GRANTS = {SEARCH_ROLE: {SEARCH_ROLE}, ADMIN_ROLE: {SEARCH_ROLE, ADMIN_ROLE}}


def key_from_metadata(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key not in ("x-api-key", "authorization"):
            continue  # other headers may be binary (-bin): never decode them
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if key == "x-api-key":
            return text
        if text.lower().startswith("bearer "):
            return text[7:].strip()
    return None


class ApiKeyPolicy:
    """Which key may call which method. Raises the domain errors that the runtime's one
    interceptor turns into a status (with ErrorInfo, counted like every other call)."""

    def __init__(
        self,
        keys: Mapping[str, str],
        required_role: Callable[[str], str | None],
    ) -> None:
        """keys: key -> role; required_role: method -> role (None: open, e.g. health)."""
        self._keys = dict(keys)
        self._required_role = required_role

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def _role_of(self, presented: str) -> str | None:
        # Constant-time comparison against every key: timing reveals nothing about them.
        role = None
        for key, key_role in self._keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                role = key_role
        return role

    def check(self, method: str, metadata: tuple[tuple[str, str | bytes], ...] | None) -> None:
        required = self._required_role(method)
        if required is None or not self._keys:
            return
        presented = key_from_metadata(metadata)
        if not presented:
            raise Unauthenticated(
                "missing API key (x-api-key or authorization: Bearer metadata)",
                reason="API_KEY_MISSING",
            )
        role = self._role_of(presented)
        if role is None:
            raise Unauthenticated("unknown API key", reason="API_KEY_UNKNOWN")
        if required not in GRANTS[role]:
            raise PermissionDenied(
                f"this API key has no {required!r} permission",
                reason="PERMISSION_MISSING",
                metadata={"required_role": required},
            )


def read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def server_credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> grpc.ServerCredentials:
    """TLS; with a client CA, mutual TLS (clients must present a certificate it signed)."""
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=read(client_ca_file),
        require_client_auth=client_ca_file is not None,
    )


def channel_credentials(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file),
        private_key=read(key_file),
        certificate_chain=read(cert_file),
    )
