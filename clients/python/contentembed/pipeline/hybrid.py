"""``ingest --hybrid`` and ``build --hybrid`` against an existing collection: it must be
hybrid already (a lexical index cannot be added to a dense collection in place), in the
language asked for."""

from __future__ import annotations

from contentembed.client import CollectionInfo

DEFAULT_LANGUAGE = "english"


class NotHybrid(ValueError):
    """The collection exists without a lexical index, or with another language."""


def check_hybrid(info: CollectionInfo, language: str | None) -> None:
    """Raises NotHybrid unless ``info`` has a lexical index beside vectors (in
    ``language``, when given)."""
    if info.lexical_only:
        raise NotHybrid(
            f"collection {info.name} is lexical-only (no vectors), so --hybrid cannot apply "
            "to it; use a new collection name, or give --lexical-only instead"
        )
    if not info.lexical:
        raise NotHybrid(
            f"collection {info.name} exists without a lexical index (dense only), so --hybrid "
            "cannot apply to it; use a new collection name, or drop --hybrid"
        )
    _check_language(info, language, "hybrid")


def check_lexical_only(info: CollectionInfo, language: str | None) -> None:
    """Raises NotHybrid unless ``info`` is lexical-only (in ``language``, when given): a
    collection of another kind cannot become one in place."""
    if not info.lexical_only:
        kind = "hybrid (vectors and a lexical index)" if info.lexical else "dense only"
        raise NotHybrid(
            f"collection {info.name} exists and is {kind}, not lexical-only, so "
            "--lexical-only cannot apply to it; use a new collection name, or drop "
            "--lexical-only"
        )
    _check_language(info, language, "lexical-only")


def _check_language(info: CollectionInfo, language: str | None, kind: str) -> None:
    """Raises NotHybrid when ``language`` is given and is not the collection's."""
    wanted = (language or "").strip().lower()
    if wanted and wanted != info.lexical_language.lower():
        raise NotHybrid(
            f"collection {info.name} is {kind} in {info.lexical_language}, not {wanted}; "
            f"give --language {info.lexical_language} or use a new collection name"
        )
