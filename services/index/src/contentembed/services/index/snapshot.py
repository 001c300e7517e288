"""items.json, the part of a collection snapshot beside index.bin and manifest.json
(persistence.py): written from a collection's maps, and read back with index.bin, each
part checked against the others and the manifest. Pure index code: no grpc.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.validation import shown
from contentembed.services.index.dense import DenseIndex, HnswIndex, HnswParams, hnsw_file_dim
from contentembed.services.index.lexical import check_text
from contentembed.services.index.persistence import CorruptData

# Vectors read back per call while checking a snapshot: bounded memory at any dimension.
CHECK_CHUNK_BYTES = 16 << 20


def write_items(
    path: Path,
    ids: Sequence[str | None],
    metadata: Mapping[int, dict[str, Any]],
    next_label: int,
    vacant: int,
    texts: Mapping[int, str],
) -> None:
    """items.json of a collection: its ids by label, metadata and texts by label."""
    items: dict[str, Any] = {
        "ids": ids,
        "metadata": [[label, meta] for label, meta in metadata.items()],
        "next_label": next_label,
        "vacant": vacant,
    }
    if texts:  # absent when empty: snapshots of text-less items stay as before
        items["texts"] = [[label, text] for label, text in sorted(texts.items())]
    path.write_text(json.dumps(items, separators=(",", ":")))


def read_dense(
    directory: Path, dim: int, params: HnswParams, count: int, elements: int | None
) -> tuple[HnswIndex, SnapshotItems]:
    """index.bin and items.json of a dense snapshot, checked against each other and against
    the manifest's dim, count and elements."""
    stored_dim = hnsw_file_dim(directory / "index.bin")
    if stored_dim != dim:
        raise CorruptData(f"{directory}: index.bin holds {stored_dim}-d vectors, manifest says {dim}")
    try:
        index = HnswIndex.load(directory / "index.bin", dim, params)
        raw = _read_json(directory / "items.json")
    except (RuntimeError, ValueError) as error:
        raise CorruptData(f"{directory}: {error}") from None
    try:
        items = SnapshotItems.parse(raw)
        items.check_against(index, count, elements)
    except CorruptData as error:
        raise CorruptData(f"{directory}: {error}") from None
    index.vacant = items.vacant
    return index, items


def read_lexical_only(
    directory: Path, manifest: Mapping[str, Any], space_id: str, count: int
) -> SnapshotItems:
    """items.json alone: every live item must have its text (nothing else finds it),
    no slot is vacant (there are no hnswlib slots) and the counts agree."""
    try:
        items = SnapshotItems.parse(_read_json(directory / "items.json"))
    except (KeyError, TypeError, ValueError, RecursionError, CorruptData) as error:
        raise CorruptData(f"{directory}: {error}") from None
    if space_id:
        raise CorruptData(f"{directory}: a lexical-only snapshot in space {shown(space_id)}")
    if len(items.label_of) != count:
        raise CorruptData(f"{directory}: {len(items.label_of)} items, the manifest says {count}")
    if items.vacant or int(manifest.get("elements", 0)):
        raise CorruptData(f"{directory}: a lexical-only snapshot with vector slots")
    if set(items.texts) != set(items.label_of.values()):
        raise CorruptData(f"{directory}: lexical-only items without text")
    return items


def _read_json(path: Path) -> Any:
    # NaN and Infinity are not JSON (Python reads them anyway): metadata holding them
    # could not be sent back in a protobuf Struct.
    return json.loads(path.read_bytes(), parse_constant=_not_json)


def _not_json(constant: str) -> None:
    raise ValueError(f"items.json holds {constant}, which is not JSON")


@dataclass
class SnapshotItems:
    """items.json of a snapshot, parsed and checked on its own."""

    ids: list[str | None]  # by label; None for a deleted one
    label_of: dict[str, int]
    metadata: dict[int, dict[str, Any]]
    vacant: int
    texts: dict[int, str]

    @classmethod
    def parse(cls, raw: Any) -> SnapshotItems:
        if not isinstance(raw, dict):
            raise CorruptData("items.json is not an object")
        ids, pairs, next_label, vacant = (
            raw.get("ids"), raw.get("metadata"), raw.get("next_label"), raw.get("vacant")
        )
        if not isinstance(ids, list) or not isinstance(pairs, list):
            raise CorruptData("items.json: ids and metadata must be lists")
        if not _is_count(next_label) or not _is_count(vacant):
            raise CorruptData("items.json: next_label and vacant must be non-negative integers")
        # Labels are handed out in order and never reused, one ids entry each.
        if next_label != len(ids):
            raise CorruptData(f"items.json: next_label is {next_label} but {len(ids)} labels exist")
        label_of: dict[str, int] = {}
        for label, item_id in enumerate(ids):
            if item_id is None:
                continue
            if not isinstance(item_id, str) or not item_id:
                raise CorruptData(f"items.json: label {label} has an invalid id")
            if label_of.setdefault(item_id, label) != label:
                raise CorruptData(f"items.json: id {shown(item_id)} appears twice")
        metadata: dict[int, dict[str, Any]] = {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and _is_count(pair[0])
                    and isinstance(pair[1], dict)):
                raise CorruptData("items.json: metadata entries must be [label, object]")
            label, values = pair
            if label >= len(ids) or ids[label] is None:
                raise CorruptData(f"items.json: metadata for label {label}, which holds no item")
            if label in metadata:
                raise CorruptData(f"items.json: metadata for label {label} appears twice")
            metadata[label] = values
        pairs = raw.get("texts", [])  # snapshots before texts existed have none
        if not isinstance(pairs, list):
            raise CorruptData("items.json: texts must be a list")
        texts: dict[int, str] = {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and _is_count(pair[0])
                    and isinstance(pair[1], str) and pair[1]):
                raise CorruptData("items.json: texts entries must be [label, non-empty string]")
            label, text = pair
            if label >= len(ids) or ids[label] is None:
                raise CorruptData(f"items.json: text for label {label}, which holds no item")
            if label in texts:
                raise CorruptData(f"items.json: text for label {label} appears twice")
            try:  # a bundle's texts did not pass through Upsert's checks
                check_text(text, what=f"label {label}")
            except InvalidArgument as error:
                raise CorruptData(f"items.json: {error.message}") from None
            texts[label] = text
        return cls(ids, label_of, metadata, vacant, texts)

    def check_against(self, index: DenseIndex, count: int, elements: int | None) -> None:
        """Every live item has a vector that searches can find, every element of the index
        has an item or is deleted, and the counts agree with the manifest."""
        live = len(self.label_of)
        if live != count:
            raise CorruptData(f"{live} items, the manifest says {count}")
        stored = index.count
        if elements is not None and stored != elements:
            raise CorruptData(f"index.bin holds {stored} elements, the manifest says {elements}")
        # Each element is a live item or a deleted slot waiting to be reused.
        if stored != live + self.vacant:
            raise CorruptData(
                f"index.bin holds {stored} elements for {live} items and {self.vacant} vacant slots"
            )
        labels = index.labels()
        if stored and int(labels.max()) >= len(self.ids):
            raise CorruptData(
                f"index.bin has label {int(labels.max())}, items.json only {len(self.ids)} labels"
            )
        live_labels = np.fromiter(self.label_of.values(), dtype=np.uint64, count=live)
        if not np.isin(live_labels, labels).all():
            raise CorruptData("items without a vector in index.bin")
        # A vacant slot still answering searches would be a hit without an id.
        for label in labels[np.isin(labels, live_labels, invert=True)].tolist():
            try:
                index.vectors([label])
            except KeyError:
                continue  # marked deleted, as it must be
            raise CorruptData(f"label {label} is searchable but holds no item")
        # And a live item must not be marked deleted (its vectors are refused); its vector
        # must be finite for scores to mean anything.
        chunk = max(1, CHECK_CHUNK_BYTES // (4 * index.dim))
        for start in range(0, live, chunk):
            try:
                vectors = index.vectors(live_labels[start : start + chunk])
            except KeyError:
                raise CorruptData("items whose vector index.bin marks deleted") from None
            if not np.isfinite(vectors).all():
                raise CorruptData("index.bin holds vectors that are not finite")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
