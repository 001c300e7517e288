"""``contentembed eval``'s figures as JSON and as table columns: one column per version,
or per (version, retrieval mode) when modes were asked for, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contentembed.pipeline.evaluation import CUTOFFS, EVAL_DEPTH, Report

MEASURES = (*(f"recall@{k}" for k in CUTOFFS), "mrr@10", "ndcg@10", f"ann_recall@{EVAL_DEPTH}")
UNION = f"union_recall@{EVAL_DEPTH}"
NOT_MEASURED = "n/a"


@dataclass(frozen=True)
class VersionFigures:
    """The reports of one version, one per mode in the order asked, and the union
    ceiling when both dense and lexical were evaluated (else None)."""

    version: str
    reports: Sequence[Report]
    union: float | None = None


def mode_key(report: Report) -> str:
    return report.mode or "default"


def eval_json(figures: Sequence[VersionFigures], by_mode: bool) -> Any:
    """Without modes: each version's flat figures (as before hybrid retrieval); with
    modes: per version ``{"version", "queries", "modes": {mode: figures},
    "union_recall@10"}``. One version: its object; several: a list."""
    items: list[dict[str, Any]] = []
    for version in figures:
        if not by_mode:
            items.append(version.reports[0].as_json())
            continue
        modes = {
            mode_key(report): {
                key: value for key, value in report.as_json().items()
                if key not in ("version", "mode", "queries")
            }
            for report in version.reports
        }
        items.append({
            "version": version.version,
            "queries": version.reports[0].queries,
            "modes": modes,
            UNION: version.union,
        })
    return items[0] if len(items) == 1 else items


def column_title(report: Report, versions: int, by_mode: bool) -> str:
    """The version, the mode (with its fusion), or both when several of each."""
    mode = mode_key(report) + (f" ({report.fusion})" if report.fusion else "")
    if not by_mode:
        return report.version
    return mode if versions == 1 else f"{report.version} {mode}"


def figure(value: Any) -> str:
    return NOT_MEASURED if value is None else f"{value:.3f}"


def eval_columns(
    figures: Sequence[VersionFigures], by_mode: bool
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column titles and rows (measure, one cell per column) of the eval table."""
    reports = [report for version in figures for report in version.reports]
    titles = [column_title(report, len(figures), by_mode) for report in reports]
    rows = [(measure, [figure(report.as_json()[measure]) for report in reports])
            for measure in MEASURES]
    return titles, rows


def union_lines(figures: Sequence[VersionFigures]) -> list[str]:
    """One line per version whose dense and lexical top lists were both evaluated."""
    return [
        f"union ceiling ({version.version}): a relevant id in the dense or the lexical top "
        f"{EVAL_DEPTH} for {version.union:.3f} of the queries"
        for version in figures if version.union is not None
    ]
