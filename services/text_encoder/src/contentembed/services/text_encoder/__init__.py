"""Text-encoder service: texts -> L2-normalized vectors of one embedding space."""
