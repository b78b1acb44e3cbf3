"""TODO: op family image (being written)."""
