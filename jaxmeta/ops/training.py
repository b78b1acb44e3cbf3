"""TODO: op family training (being written)."""
