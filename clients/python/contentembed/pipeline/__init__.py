"""The offline side of contentembed: catalogs, bundles, publishing and evaluation."""
