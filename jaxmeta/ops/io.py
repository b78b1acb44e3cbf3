"""TODO: op family io (being written)."""
