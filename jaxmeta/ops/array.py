"""TODO: op family array (being written)."""
