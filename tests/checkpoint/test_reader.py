"""`CheckpointReader`: TF's reader API over V1 and V2 checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmeta import CheckpointError
from jaxmeta.checkpoint import CheckpointReader

from ._common import FIXTURES, assert_same, gen, tf_tensor

PREFIXES = ["v2_dtypes/model.ckpt", "v2_tf1/model.ckpt-7", "v2_tf1/renamed.ckpt", "v2_sharded/model.ckpt",
            "v1/model.ckpt", "v1_sharded/model.ckpt-?????-of-00003"]


def test_format_detection():
    assert CheckpointReader(FIXTURES / "v2_tf1" / "model.ckpt-7").format == "v2"
    assert CheckpointReader(FIXTURES / "v1" / "model.ckpt").format == "v1"


def test_api():
    r = CheckpointReader(str(FIXTURES / "v2_tf1" / "model.ckpt-7"))
    names = [name for name, _ in r.list_variables()]
    assert names == sorted(names) == sorted(list(gen.GRAPH_VARIABLES) + ["global_step"])
    assert dict(r.list_variables())["emb"] == [10, 4]
    assert r.get_variable_to_shape_map()["dense/kernel"] == [3, 4]
    dtypes = r.get_variable_to_dtype_map()
    assert dtypes["global_step"] == np.int64 and dtypes["vocab"].kind == "O" and dtypes["res/weights"] == np.float64
    assert r.has_tensor("emb") and not r.has_tensor("nope")
    assert_same(r.get_tensor("dense/kernel"), gen.value_for("dense/kernel", "float32", (3, 4)))
    many = r.get_tensors(names, workers=4)
    assert list(many) == names
    assert_same(many["vocab"], gen.value_for("vocab", "string", (5,)))


def test_directory_and_file_names_accepted():
    folder = FIXTURES / "v2_tf1"
    assert CheckpointReader(folder).prefix == str(folder / "model.ckpt-7")
    assert CheckpointReader(str(folder / "model.ckpt-7.index")).prefix == str(folder / "model.ckpt-7")
    assert CheckpointReader(str(folder / "model.ckpt-7.data-00000-of-00001")).format == "v2"


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*Pass the prefix"):
        CheckpointReader(str(tmp_path / "model.ckpt"))
    with pytest.raises(CheckpointError, match="without a 'checkpoint' state file"):
        CheckpointReader(str(tmp_path))


def test_missing_tensor_message():
    with pytest.raises(CheckpointError, match="tensor 'nope' is not in checkpoint"):
        CheckpointReader(FIXTURES / "v1" / "model.ckpt").get_tensor("nope")


@pytest.mark.oracle
@pytest.mark.parametrize("prefix", PREFIXES)
def test_matches_tensorflow(prefix):
    tf = pytest.importorskip("tensorflow")
    path = str(FIXTURES / prefix)
    theirs = tf.train.load_checkpoint(path)
    ours = CheckpointReader(path)
    assert ours.list_variables() == tf.train.list_variables(path)
    assert ours.get_variable_to_shape_map() == theirs.get_variable_to_shape_map()
    their_dtypes = theirs.get_variable_to_dtype_map()
    for name, dtype in ours.get_variable_to_dtype_map().items():
        assert dtype == (object if their_dtypes[name] == tf.string else their_dtypes[name].as_numpy_dtype)
        if ours.format == "v1" and name == "emb":
            continue  # TF cannot read sliced V1 tensors
        assert_same(ours.get_tensor(name), tf_tensor(theirs, name))
