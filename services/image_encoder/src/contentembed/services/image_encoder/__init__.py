"""Image-encoder service: encoded images -> L2-normalized vectors of one embedding space."""
