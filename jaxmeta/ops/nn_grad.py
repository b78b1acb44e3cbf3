"""TODO: op family nn_grad (being written)."""
