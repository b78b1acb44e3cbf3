"""V1 checkpoints (SavedTensorSlices tables), single file and sharded."""

from __future__ import annotations

import pytest

from jaxmeta import CheckpointError
from jaxmeta.checkpoint._v1 import V1Reader, is_v1_table

from ._common import FIXTURES, assert_same, copy_fixture, gen, tf_tensor

SINGLE = FIXTURES / "v1" / "model.ckpt"
SHARDED = FIXTURES / "v1_sharded" / "model.ckpt-?????-of-00003"


@pytest.mark.parametrize("pattern", [SINGLE, SHARDED], ids=["single", "sharded"])
def test_reads_every_variable(pattern):
    reader = V1Reader(str(pattern))
    assert set(gen.GRAPH_VARIABLES) <= set(reader.names())
    for name, (dtype, shape, _, _) in gen.GRAPH_VARIABLES.items():
        assert reader.shape(name) == shape
        assert_same(reader.read(name), gen.value_for(name, dtype, shape))


def test_sharded_uses_every_file():
    assert len(V1Reader(str(SHARDED)).files) == 3


def test_no_match():
    with pytest.raises(CheckpointError, match="no V1 checkpoint file matches"):
        V1Reader(str(FIXTURES / "v1" / "nothing-*"))


def test_is_v1_table():
    assert is_v1_table(str(SINGLE))
    assert not is_v1_table(str(FIXTURES / "v1" / "checkpoint"))


def test_every_byte_flip_detected(tmp_path):
    path = copy_fixture("v1", tmp_path) / "model.ckpt"
    data = path.read_bytes()
    for pos in range(len(data)):
        corrupt = bytearray(data)
        corrupt[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError):
            reader = V1Reader(str(path))
            for name in reader.names():
                reader.read(name)


@pytest.mark.oracle
@pytest.mark.parametrize("pattern", [SINGLE, SHARDED], ids=["single", "sharded"])
def test_matches_tensorflow(pattern):
    tf = pytest.importorskip("tensorflow")
    theirs = tf.train.load_checkpoint(str(pattern))
    ours = V1Reader(str(pattern))
    assert sorted(theirs.get_variable_to_shape_map()) == ours.names()
    for name in ours.names():
        if name == "emb":  # TF's reader cannot read sliced V1 tensors ("Sliced checkpoints are not supported")
            continue
        assert_same(ours.read(name), tf_tensor(theirs, name))
