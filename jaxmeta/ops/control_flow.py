"""TODO: op family control_flow (being written)."""
