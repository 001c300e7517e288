"""Conversions between the index protos and domain values that both of the shard's
servicers (the IndexService edge and replication) use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.services.common.errors import InvalidArgument
from contentembed.services.index.bundles import Upload
from contentembed.services.index.catalog import CandidateSpec
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.lexical import LexicalParams


def params_from_pb(message: pb.HnswParams, defaults: HnswParams) -> HnswParams:
    return HnswParams(
        m=message.m or defaults.m,
        ef_construction=message.ef_construction or defaults.ef_construction,
        ef_search=message.ef_search or defaults.ef_search,
    )


def lexical_from_pb(message: types_pb2.LexicalConfig) -> LexicalParams | None:
    """None unless enabled (a language without enabled is ignored, like an unset config);
    an unknown language is INVALID_ARGUMENT BAD_LEXICAL_LANGUAGE, lexical_only without
    enabled INVALID_ARGUMENT BAD_LEXICAL_CONFIG."""
    if message.lexical_only and not message.enabled:
        raise InvalidArgument(
            "lexical.lexical_only needs lexical.enabled: a collection with neither vectors "
            "nor a lexical index could not be searched",
            reason="BAD_LEXICAL_CONFIG",
        )
    return LexicalParams(message.language, message.lexical_only) if message.enabled else None


def lexical_to_pb(params: LexicalParams | None) -> types_pb2.LexicalConfig | None:
    if params is None:
        return None
    return types_pb2.LexicalConfig(
        enabled=True, language=params.language, lexical_only=params.lexical_only
    )


def candidate_to_pb(candidate: CandidateSpec | None) -> pb.CandidateState | None:
    if candidate is None:
        return None
    return pb.CandidateState(version=candidate.version, shadow_fraction=candidate.shadow_fraction,
                             canary_weight=candidate.canary_weight)


def candidate_from_pb(message: pb.CandidateState) -> CandidateSpec | None:
    """None for an unset or empty version (no candidate)."""
    if not message.version:
        return None
    return CandidateSpec(message.version, message.shadow_fraction, message.canary_weight)


def split_header(messages: Iterator[Any], what: str) -> tuple[Any, Iterator[Any]]:
    """The header of a client stream of header-then-chunks (UploadBundle, InstallSnapshot)
    and the messages after it; INVALID_ARGUMENT UPLOAD_HEADER_MISSING unless the first
    message is one."""
    messages = iter(messages)
    first = next(messages, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument(f"the first message of {what} must be its header",
                              reason="UPLOAD_HEADER_MISSING")
    return first.header, messages


def write_chunks(upload: Upload, messages: Iterator[Any]) -> None:
    """Every later message's chunk into ``upload``; INVALID_ARGUMENT UPLOAD_HEADER_REPEATED
    for another header."""
    for position, message in enumerate(messages, start=1):
        if message.WhichOneof("part") != "chunk":
            raise InvalidArgument(f"message {position}: only the first message is a header",
                                  reason="UPLOAD_HEADER_REPEATED")
        upload.write(message.chunk.file, message.chunk.offset, message.chunk.data)
