"""Index service: hnswlib collections on one shard."""
