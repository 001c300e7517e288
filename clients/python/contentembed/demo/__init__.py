"""The demo's data (a small product catalog and its paraphrased queries) and the builder of
a larger, generated evaluation set (:mod:`contentembed.demo.docstrings`)."""
