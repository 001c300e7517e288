"""The ``contentembed`` command line."""
