"""Offline batch pipeline: catalog -> embeddings -> bundle."""
