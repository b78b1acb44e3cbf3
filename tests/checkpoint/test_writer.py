"""The V2 writer: byte-identical to TensorFlow's, atomic, and read back by TF."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta import CheckpointError
from jaxmeta.checkpoint import CheckpointReader, SliceValue, _writer, write_checkpoint
from jaxmeta.checkpoint._bundle import data_path, index_path

from ._common import FIXTURES, assert_same, gen


def _fixture_tensors(prefix):
    r = CheckpointReader(str(prefix))
    return {n: r.get_tensor(n) for n, _ in r.list_variables()}, {n: r.dtype_enum(n) for n, _ in r.list_variables()}


def _same_files(ours, theirs):
    for path in (index_path, lambda p: data_path(p, 0, 1)):
        with open(path(str(ours)), "rb") as a, open(path(str(theirs)), "rb") as b:
            assert a.read() == b.read(), path(str(ours))


def test_every_dtype_byte_identical_to_tensorflow(tmp_path):
    tensors, dtypes = _fixture_tensors(FIXTURES / "v2_dtypes" / "model.ckpt")
    write_checkpoint(str(tmp_path / "model.ckpt"), tensors, dtypes=dtypes)
    _same_files(tmp_path / "model.ckpt", FIXTURES / "v2_dtypes" / "model.ckpt")


def test_partitioned_byte_identical_to_tensorflow(tmp_path):
    tensors, dtypes = _fixture_tensors(FIXTURES / "v2_tf1" / "model.ckpt-7")
    emb = tensors["emb"]
    tensors["emb"] = [SliceValue((10, 4), ((0, 4), (0, 4)), emb[:4]), SliceValue((10, 4), ((4, 3), (0, 4)), emb[4:7]),
                      SliceValue((10, 4), ((7, 3), (0, 4)), emb[7:])]
    write_checkpoint(str(tmp_path / "m"), tensors, dtypes=dtypes)
    _same_files(tmp_path / "m", FIXTURES / "v2_tf1" / "model.ckpt-7")
    assert_same(CheckpointReader(str(tmp_path / "m")).get_tensor("emb"), emb)


def test_dtype_inferred_and_jax_arrays(tmp_path):
    prefix = str(tmp_path / "m")
    write_checkpoint(prefix, {"a": jnp.arange(6.0).reshape(2, 3), "s": np.array(["x", "yz"], dtype=object),
                              "b": np.array(True)})
    r = CheckpointReader(prefix)
    assert_same(r.get_tensor("a"), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert r.get_tensor("s").tolist() == [b"x", b"yz"]
    assert r.get_tensor("b").shape == ()


def test_int64_written_from_int32_and_overflow_refused(tmp_path):
    write_checkpoint(str(tmp_path / "m"), {"step": np.int32(5)}, dtypes={"step": 9})
    assert CheckpointReader(str(tmp_path / "m")).get_tensor("step").dtype == np.int64
    with pytest.raises(CheckpointError, match="do not fit"):
        write_checkpoint(str(tmp_path / "m2"), {"x": np.array([1 << 40])}, dtypes={"x": 3})


def test_slices_must_tile(tmp_path):
    with pytest.raises(CheckpointError, match="cover"):
        write_checkpoint(str(tmp_path / "m"), {"p": [SliceValue((4,), ((0, 2),), np.zeros(2, np.float32))]})


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    prefix = str(tmp_path / "m")
    write_checkpoint(prefix, {"a": np.ones(3, np.float32), "b": np.zeros(2, np.float32)})
    before = sorted(os.listdir(tmp_path))
    original = _writer._DataFile.append
    calls = []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(_writer._DataFile, "append", failing)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(prefix, {"a": np.full(3, 7, np.float32), "b": np.zeros(2, np.float32)})
    assert sorted(os.listdir(tmp_path)) == before  # no temporary files left behind
    assert_same(CheckpointReader(prefix).get_tensor("a"), np.ones(3, np.float32))


@pytest.mark.oracle
def test_tensorflow_reads_what_we_write(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tensors = {name: gen.value_for(name, dtype, shape) for name, (dtype, shape) in gen.DTYPE_TENSORS.items()}
    write_checkpoint(str(tmp_path / "m"), tensors)
    theirs = tf.train.load_checkpoint(str(tmp_path / "m"))
    for name, value in tensors.items():
        got = np.asarray(theirs.get_tensor(name))
        assert_same(got.astype(object) if got.dtype.kind == "S" else got, value)
