"""``contentembed search --html``: a search's hits as one self-contained HTML page.

Everything is inline (CSS, images as ``data:`` URIs), so the file can be mailed or
attached as it is. Each hit is one row: a rank marker, a thumbnail when the hit's
metadata names an image, its id and a snippet, and a score bar whose width is the score
(cosine, clamped to 0..1) of a fixed-width track. Lexical (BM25) and hybrid scores have
no fixed scale, so there the bar is the score relative to the best hit's; a hybrid hit
also names the rank and score each retriever (dense, lexical) gave it. The marker and bar
colours are constants so that a screenshot of the page can be checked by colour.

A hit's image comes from its metadata: ``thumbnail`` or ``image``, either a
``data:image/...;base64,`` URI or a path relative to ``media_root`` (default: the
current directory). A path outside ``media_root``, a file that is not a PNG, JPEG, GIF,
WebP or BMP image, or one over MAX_INLINE_BYTES is left out: metadata from the server
never makes the page embed an arbitrary local file.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contentembed.client import Hit, SearchResult

RANK_MARKER_COLOUR = (0x1A, 0x5F, 0xD6)
SCORE_BAR_COLOUR = (0xE0, 0x19, 0x7D)
SCORE_TRACK_PX = 320
ROW_HEIGHT_PX = 76
MAX_INLINE_BYTES = 4 * 1024 * 1024
IMAGE_KEYS = ("thumbnail", "image")
SNIPPET_CHARS = 240

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def image_type(data: bytes) -> str | None:
    """The MIME type of encoded image bytes, by their signature; None if not an image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for signature, mime in _SIGNATURES if data.startswith(signature)), None)


def data_uri(data: bytes) -> str | None:
    """``data:`` URI of an encoded image; None when it is not one or too big to inline."""
    mime = image_type(data)
    if mime is None or len(data) > MAX_INLINE_BYTES:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _from_data_uri(value: str) -> str | None:
    header, _, payload = value.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        return None
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data_uri(data)  # re-encoded: only a real image of a known type gets through


def _from_path(value: str, media_root: Path) -> str | None:
    root = media_root.resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_INLINE_BYTES:
            return None
        return data_uri(path.read_bytes())
    except OSError:
        return None


def hit_image(metadata: Mapping[str, Any], media_root: Path) -> str | None:
    """A ``data:`` URI for the hit's ``thumbnail`` or ``image`` metadata, if usable."""
    for key in IMAGE_KEYS:
        value = metadata.get(key)
        if not isinstance(value, str) or not value:
            continue
        uri = _from_data_uri(value) if value.startswith("data:") else _from_path(value, media_root)
        if uri:
            return uri
    return None


def _shorten(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def hit_snippet(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(title, text) from the metadata's ``title`` and ``text`` fields, each maybe empty."""
    title, text = metadata.get("title"), metadata.get("text")
    return (
        _shorten(title, 120) if isinstance(title, str) else "",
        _shorten(text) if isinstance(text, str) else "",
    )


def _other_metadata(metadata: Mapping[str, Any]) -> str:
    rest = {k: v for k, v in metadata.items() if k not in ("title", "text", *IMAGE_KEYS)}
    return _shorten(json.dumps(rest, ensure_ascii=False, default=str), 160) if rest else ""


CSS = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fff; }}
h1 {{ font-size: 18px; margin: 0 0 6px; }}
.query {{ display: flex; gap: 12px; align-items: center; margin-bottom: 4px; }}
.query img {{ width: 64px; height: 64px; object-fit: cover; border: 1px solid #ccc; }}
.meta {{ color: #666; font-size: 12px; margin-bottom: 12px; }}
.partial {{ color: #a60; font-weight: bold; }}
ol {{ list-style: none; padding: 0; margin: 0; }}
.hit {{ display: flex; align-items: center; gap: 12px; height: {ROW_HEIGHT_PX - 8}px;
        margin-bottom: 8px; overflow: hidden; }}
.rank {{ flex: none; width: 28px; height: 28px; border-radius: 4px; color: #fff;
         background: {_hex(RANK_MARKER_COLOUR)}; text-align: center; line-height: 28px;
         font-weight: bold; font-size: 13px; }}
.thumb {{ flex: none; width: 64px; height: 64px; background: #f2f2f2; }}
.thumb img {{ width: 64px; height: 64px; object-fit: cover; display: block; }}
.body {{ flex: 1; min-width: 0; }}
.id {{ font-weight: bold; font-family: ui-monospace, monospace; }}
.snippet, .extra {{ white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.extra, .retrievers {{ color: #777; font-size: 12px; }}
.score {{ flex: none; width: {SCORE_TRACK_PX + 64}px; display: flex; align-items: center;
          gap: 8px; font-variant-numeric: tabular-nums; }}
.track {{ width: {SCORE_TRACK_PX}px; height: 14px; background: #e8e8e8; }}
.bar {{ height: 14px; background: {_hex(SCORE_BAR_COLOUR)}; }}
"""


def bar_fraction(result: SearchResult, score: float) -> float:
    """The share of the score track a hit's bar fills: the cosine for dense answers, the
    score over the best hit's for lexical and hybrid ones (BM25 and fusion scores have
    no fixed scale)."""
    if result.mode in ("", "dense"):
        return max(0.0, min(1.0, score))
    best = max((hit.score for hit in result.hits), default=0.0)
    return max(0.0, min(1.0, score / best)) if best > 0 else 0.0


def _retrievers(hit: Hit) -> tuple[str, str]:
    """(text, data attributes) of which retriever found the hit, at which rank and score."""
    parts, attributes = [], []
    for name, rank, score in (("dense", hit.dense_rank, hit.dense_score),
                              ("lexical", hit.lexical_rank, hit.lexical_score)):
        if rank is None:
            parts.append(f"{name} –")
            continue
        shown = f" {score:.3f}" if score is not None else ""
        parts.append(f"{name} #{rank}{shown}")
        attributes.append(f' data-{name}-rank="{rank}"')
    return " · ".join(parts), "".join(attributes)


def render_search_page(
    result: SearchResult,
    *,
    collection: str,
    query_text: str | None = None,
    query_image: bytes | None = None,
    query_name: str = "",
    exact: bool = False,
    media_root: Path | None = None,
) -> str:
    """The whole page as a string; every value from the query or the server is escaped."""
    root = media_root or Path.cwd()
    esc = html.escape
    if query_image is not None:
        uri = data_uri(query_image)
        picture = f'<img alt="query image" src="{uri}">' if uri else ""
        query = f'{picture}<span>image <b>{esc(query_name)}</b></span>'
    else:
        query = f"<span>“{esc(query_text or '')}”</span>"
    latency = result.latency_ms
    if result.mode in ("", "dense"):
        retrieval = "exact" if exact else "HNSW"
    else:
        retrieval = result.mode + (f" ({result.fusion})" if result.fusion else "")
    detail = any(h.dense_rank is not None or h.lexical_rank is not None for h in result.hits)
    line = (
        f"collection {esc(collection)} · space {esc(result.space_id)} · "
        f"version {esc(result.version or '(serving)')} · {len(result.shards)} shards · "
        f"{esc(retrieval)} · {latency.get('total', 0.0):.1f} ms "
        f"(encode {latency.get('encode', 0.0):.1f}, search {latency.get('search', 0.0):.1f})"
    )
    if result.partial:
        line += ' · <span class="partial">PARTIAL</span>'
    rows = []
    for rank, hit in enumerate(result.hits, start=1):
        uri = hit_image(hit.metadata, root)
        thumb = f'<img alt="" src="{uri}">' if uri else ""
        title, text = hit_snippet(hit.metadata)
        snippet = " — ".join(esc(part) for part in (title, text) if part) or esc(hit.id)
        width = bar_fraction(result, hit.score) * SCORE_TRACK_PX
        found_by, attributes = _retrievers(hit) if detail else ("", "")
        retrievers = f'<div class="retrievers">{esc(found_by)}</div>' if detail else ""
        rows.append(
            f'<li class="hit" data-id="{esc(hit.id)}" data-score="{hit.score:.6f}"{attributes}>'
            f'<span class="rank">{rank}</span><span class="thumb">{thumb}</span>'
            f'<div class="body"><div class="id">{esc(hit.id)}</div>'
            f'<div class="snippet">{snippet}</div>'
            f'<div class="extra">{esc(_other_metadata(hit.metadata))}</div>{retrievers}</div>'
            f'<div class="score"><div class="track"><div class="bar" style="width: {width:.1f}px">'
            f"</div></div><span>{hit.score:.3f}</span></div></li>"
        )
    hits = "\n".join(rows) if rows else "<p>no hits</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>contentembed search: {esc(collection)}</title><style>{CSS}</style></head>\n"
        f'<body><h1>contentembed search</h1><div class="query">{query}</div>'
        f'<div class="meta">{line}</div>\n<ol>\n{hits}\n</ol></body></html>\n'
    )
