"""Images: the corpus sources, the canonical decode, display copies."""
