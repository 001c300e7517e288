"""The catalog reader moved to contentembed.pipeline.catalog; these names stay here."""

from contentembed.pipeline.catalog import (
    DEMO_CATALOG,
    DEMO_DIR,
    DEMO_QUERIES,
    CatalogError,
    LabelledQuery,
    read_catalog,
    read_labelled_queries,
)

__all__ = [
    "DEMO_CATALOG",
    "DEMO_DIR",
    "DEMO_QUERIES",
    "CatalogError",
    "LabelledQuery",
    "read_catalog",
    "read_labelled_queries",
]
