"""TODO: op family math (being written)."""
