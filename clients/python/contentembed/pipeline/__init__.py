"""The offline side of contentembed: catalogs, bundles (build), publishing and evaluation."""
