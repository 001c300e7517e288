"""Page sizes and opaque, signed page tokens (pure: no grpc).

A page token holds where the previous page ended (the last name or id) and is signed with
HMAC-SHA256 over that position and what was listed (AIP-158: tokens are opaque). A client
can neither forge a position nor carry a token over to another listing: both are
INVALID_ARGUMENT BAD_PAGE_TOKEN. Before, a token was the base64 of the position, which
clients could write themselves and came to depend on.

The secret is --page-token-secret where set (every replica and restart then accepts the
others' tokens), else random per process: a token then lasts as long as the process
that issued it, and a listing across a restart starts over.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from contentembed.services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAC_BYTES = 16


def page_size_of(page_size: int, default: int = DEFAULT_PAGE_SIZE, limit: int = MAX_PAGE_SIZE) -> int:
    """A request's page_size (0: the default); INVALID_ARGUMENT BAD_PAGE_SIZE outside 0..limit."""
    if page_size < 0 or page_size > limit:
        raise InvalidArgument(f"page_size must be 0..{limit}, got {page_size}", reason="BAD_PAGE_SIZE")
    return page_size or default


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    # validate=True: the default skips characters outside the alphabet, so "***" would
    # decode to b"" and silently restart from the first page.
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class PageTokens:
    """Issues and reads this service's page tokens; ``scope`` names the listing (the
    method, and the collection of a list of items)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret else secrets.token_bytes(32)

    @classmethod
    def from_setting(cls, secret: str | None) -> PageTokens:
        return cls(secret.encode() if secret else None)

    def _mac(self, scope: str, position: bytes) -> bytes:
        message = scope.encode() + b"\0" + position
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:MAC_BYTES]

    def issue(self, scope: str, last: str) -> str:
        """The token of the page that follows ``last``."""
        position = last.encode()
        return f"{_b64(position)}.{_b64(self._mac(scope, position))}"

    def read(self, scope: str, token: str) -> str:
        """The position a token of ``scope`` holds; "" for no token (the first page)."""
        if not token:
            return ""
        position_text, dot, mac_text = token.partition(".")
        try:
            if not dot:
                raise ValueError("no signature")
            position, mac = _unb64(position_text), _unb64(mac_text)
            if not hmac.compare_digest(mac, self._mac(scope, position)):
                raise ValueError("the signature does not match")
            return position.decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise InvalidArgument(
                "page_token is not one this listing issued (edited, from another listing, or "
                "from a process since restarted without --page-token-secret): start over "
                "without a page_token",
                reason="BAD_PAGE_TOKEN",
            ) from None
