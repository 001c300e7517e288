"""Dense, lexical and hybrid retrieval on the command line: the options ``search`` and
``eval`` share, and how a hit's per-retriever scores and ranks are shown."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from contentembed.client import Hit, SearchResult


class Mode(StrEnum):
    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


class EvalMode(StrEnum):
    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"
    ALL = "all"


class Fusion(StrEnum):
    RRF = "rrf"
    MINMAX = "minmax"


ModeOption = Annotated[
    Mode | None,
    typer.Option("--mode", help="dense (HNSW), lexical (BM25) or hybrid (both, fused); "
                 "default: hybrid on a hybrid collection, dense otherwise."),
]
FusionOption = Annotated[
    Fusion | None,
    typer.Option("--fusion", help="How hybrid fuses: rrf (ranks) or minmax (scaled scores); "
                 "default: the gateway's."),
]
AlphaOption = Annotated[
    float | None,
    typer.Option("--alpha", min=0.0, max=1.0,
                 help="minmax weight of the dense scores (1: dense only, 0: lexical only)."),
]
RrfKOption = Annotated[
    int, typer.Option("--rrf-k", min=0, max=10_000, help="RRF's k; 0: the gateway's default.")
]
DepthOption = Annotated[
    int, typer.Option("--depth", min=0,
                      help="Candidates per retriever before fusion; 0: the gateway's default."),
]

ALL_MODES = ("dense", "lexical", "hybrid")
NOT_FOUND = "–"


def retrieval_kwargs(
    mode: Mode | str | None = None,
    fusion: Fusion | str | None = None,
    alpha: float | None = None,
    rrf_k: int = 0,
    depth: int = 0,
) -> dict[str, Any]:
    """The SDK's search arguments for these options (None and 0 left to the gateway)."""
    return {
        "mode": Mode(mode).value if mode is not None else None,
        "fusion": Fusion(fusion).value if fusion is not None else None,
        "alpha": alpha,
        "rrf_k": rrf_k,
        "depth": depth,
    }


def expand_modes(modes: list[EvalMode] | list[str] | None) -> list[str | None]:
    """``eval --mode``: each named mode once, in the order given, ``all`` for the three;
    none given is ``[None]``: one run with the gateway's default mode."""
    if not modes:
        return [None]
    expanded: list[str | None] = []
    for mode in modes:
        names = ALL_MODES if EvalMode(mode) is EvalMode.ALL else (EvalMode(mode).value,)
        expanded += [name for name in names if name not in expanded]
    return expanded


def mode_label(result: SearchResult) -> str:
    """``hybrid (rrf)``, ``lexical``, ...; "" when the gateway did not say."""
    if not result.mode:
        return ""
    return f"{result.mode} ({result.fusion})" if result.fusion else result.mode


def has_retriever_detail(result: SearchResult) -> bool:
    """True when some hit carries a per-retriever rank (hybrid answers do)."""
    return any(h.dense_rank is not None or h.lexical_rank is not None for h in result.hits)


def ranks(hit: Hit) -> str:
    """``dense rank/lexical rank``, ``–`` for a retriever that did not find the hit."""
    return "/".join(
        str(rank) if rank is not None else NOT_FOUND for rank in (hit.dense_rank, hit.lexical_rank)
    )


def retriever_score(score: float | None) -> str:
    return f"{score:.3f}" if score is not None else NOT_FOUND
