"""``contentembed ingest``: a catalog upserted through the gateway (online path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from contentembed.client import ApiError, Client, ImageDocument, TextDocument
from contentembed.pipeline.catalog import (
    Catalog,
    CatalogError,
    CatalogRow,
    Reject,
    sized_batches,
)
from contentembed.pipeline.hybrid import check_hybrid, check_lexical_only
from contentembed.rpc_status import is_size_refusal


@dataclass
class IngestOutcome:
    written: int = 0
    truncated: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    created: bool = False


def ensure_collection(
    client: Client, collection: str, catalog: Catalog, space_id: str | None = None,
    *, hybrid: bool = False, language: str | None = None, lexical_only: bool = False,
) -> bool:
    """Creates a missing collection in the space of the encoder for the catalog's
    modality (or ``space_id``), hybrid (a lexical index in ``language``) when asked;
    True when it was created. An existing collection must be hybrid when ``hybrid``
    (NotHybrid otherwise): its texts would not be searchable by words. With
    ``lexical_only`` it is created (or must be) lexical-only: no space, no encoder, text
    rows only."""
    if lexical_only and "image" in catalog.modalities:
        raise CatalogError(
            "a lexical-only collection indexes text: the catalog has image rows"
        )
    try:
        info = client.get_collection(collection)
    except ApiError as error:
        if error.code != "NOT_FOUND":
            raise
    else:
        if lexical_only:
            check_lexical_only(info, language)
        elif hybrid:
            check_hybrid(info, language)
        return False
    if lexical_only:
        return client.create_collection(
            collection, exist_ok=True, lexical_only=True, language=language or "",
        ).created
    modalities = catalog.modalities or ["text"]
    if len(modalities) > 1 and not space_id:
        try:
            spaces = client.list_spaces()
        except ApiError as error:
            raise CatalogError(
                f"the catalog mixes text and image rows; give --space (a joint space) ({error})"
            ) from None
        joint = sorted(
            {s.space_id for s in spaces if s.modality == "text"}
            & {s.space_id for s in spaces if s.modality == "image"}
        )
        if len(joint) != 1:
            from contentembed.pipeline.catalog import check_single_modality

            if not joint:
                check_single_modality(catalog)
            raise CatalogError(f"several joint spaces {joint}; pick one with --space")
        space_id = joint[0]
    return client.create_collection(
        collection, space_id=space_id or "", modality=modalities[0], exist_ok=True,
        lexical=hybrid, language=(language or "") if hybrid else "",
    ).created


def _document(row: CatalogRow) -> TextDocument | ImageDocument:
    if row.text is not None:
        return TextDocument(row.id, row.text, row.metadata)
    return ImageDocument(row.id, row.content(), row.metadata)


# Upserts go out in batches of at most this many bytes (and the batch size): well under the
# gateway's 16 MiB message limit, with room for what the request adds.
MAX_BATCH_BYTES = 8 << 20


def refused_for_the_rows(error: ApiError) -> bool:
    """The gateway refused the batch for something in its rows: one row's content
    (INVALID_ARGUMENT), or the batch's size (a size refusal, not overload or a full disk,
    which end the run)."""
    return error.code == "INVALID_ARGUMENT" or is_size_refusal(
        error.code, error.reason, error.message
    )


def upsert_bisecting(
    client: Client, collection: str, rows: Sequence[CatalogRow], outcome: IngestOutcome
) -> int:
    """Upserts ``rows``; a batch the gateway refuses for its rows (``refused_for_the_rows``)
    is split until the refused rows stand alone, and those are rejected with the
    gateway's message; the others are written."""
    documents = []
    for row in rows:
        try:
            documents.append((row, _document(row)))
        except OSError as error:
            outcome.rejects.append(
                Reject(row.line, row.id, f"image file became unreadable ({error.strerror})")
            )
    if not documents:
        return len(rows)
    try:
        result = client.upsert_documents(collection, [d for _, d in documents], timeout=120.0)
    except ApiError as error:
        if not refused_for_the_rows(error):
            raise
        if len(documents) == 1:
            row = documents[0][0]
            outcome.rejects.append(Reject(row.line, row.id, f"refused: {error.message}"))
            return len(rows)
        middle = len(documents) // 2
        kept = [row for row, _ in documents]
        upsert_bisecting(client, collection, kept[:middle], outcome)
        upsert_bisecting(client, collection, kept[middle:], outcome)
        return len(rows)
    outcome.written += result.upserted_count
    outcome.truncated += result.truncated_ids
    return len(rows)


def ingest_catalog(
    client: Client,
    collection: str,
    catalog: Catalog,
    batch_size: int,
    *,
    space_id: str | None = None,
    max_rejects: int | None = None,
    show_progress: bool = True,
    hybrid: bool = False,
    language: str | None = None,
    lexical_only: bool = False,
) -> IngestOutcome:
    outcome = IngestOutcome(rejects=list(catalog.rejects))
    outcome.created = ensure_collection(
        client, collection, catalog, space_id, hybrid=hybrid, language=language,
        lexical_only=lexical_only,
    )
    with tqdm(
        total=len(catalog.rows), desc=f"ingest {catalog.path.name}", unit="item",
        disable=not show_progress,
    ) as progress:
        for batch in sized_batches(catalog.rows, CatalogRow.request_bytes, batch_size,
                                   MAX_BATCH_BYTES):
            progress.update(upsert_bisecting(client, collection, batch, outcome))
            if max_rejects is not None and len(outcome.rejects) > max_rejects:
                break
    return outcome
