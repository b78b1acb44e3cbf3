"""Native TensorFlow checkpoints: V2 bundles and V1 tables, read and written without TensorFlow."""

from jaxmeta.checkpoint._reader import CheckpointReader
from jaxmeta.checkpoint._state import get_checkpoint_state, latest_checkpoint
from jaxmeta.checkpoint._writer import SliceValue, write_checkpoint

__all__ = ["CheckpointReader", "SliceValue", "get_checkpoint_state", "latest_checkpoint", "write_checkpoint"]
