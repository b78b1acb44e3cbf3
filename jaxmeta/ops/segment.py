"""TODO: op family segment (being written)."""
