"""TODO: op family nn (being written)."""
