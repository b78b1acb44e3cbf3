"""TODO: op family random (being written)."""
