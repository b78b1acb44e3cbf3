"""TODO: op family functional (being written)."""
