"""Small catalogs shared by the fault tests."""

from __future__ import annotations

TEN_PRODUCTS = [
    {"id": f"doc-{n}", "text": text}
    for n, text in enumerate([
        "gooseneck kettle for pour-over coffee", "burr coffee grinder", "two-person tent",
        "down sleeping bag", "trail running shoes", "waterproof bluetooth speaker",
        "yoga mat", "adjustable dumbbells", "espresso machine", "camping stove",
    ])
]
