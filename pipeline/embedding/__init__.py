"""Embeddings: encoders, the shard store, the local and Ray engines, the clip-retrieval import."""
