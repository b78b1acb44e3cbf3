"""`Saver`: the key -> variable mapping from the graph's own save/restore subgraphs."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

import jaxmeta
from jaxmeta import CheckpointError
from jaxmeta._saver import Saver
from jaxmeta.checkpoint import CheckpointReader

from ._common import FIXTURES, assert_same, copy_fixture, gen

TF1 = FIXTURES / "v2_tf1"


@pytest.fixture(scope="module")
def graph():
    return jaxmeta.import_meta_graph(str(TF1 / "model.ckpt-7.meta"))


def _expected(name):
    dtype, shape, _, _ = gen.GRAPH_VARIABLES[name]
    return gen.value_for(name, dtype, shape)


def test_mapping_from_restore_subgraph(graph):
    specs = {s.variable: s for s in Saver(graph).restore_specs}
    assert specs["emb/part_1"].key == "emb" and specs["emb/part_1"].shape_and_slice == "10 4 4,3:0,4"
    assert specs["res/weights"].key == "res/weights"  # a resource variable (AssignVariableOp)
    assert {s.key for s in Saver(graph).save_specs} == {s.key for s in specs.values()}


def test_restore(graph):
    v = Saver(graph).restore(str(TF1 / "model.ckpt-7"))
    np.testing.assert_array_equal(v["dense/kernel"], _expected("dense/kernel"))
    np.testing.assert_array_equal(v["emb/part_1"], _expected("emb")[4:7])
    np.testing.assert_array_equal(v["res/weights"], _expected("res/weights").astype(v["res/weights"].dtype))
    assert v["vocab"].tolist() == _expected("vocab").tolist()
    assert int(v["global_step"]) == 7


def test_restore_from_directory_and_merge(graph):
    v = Saver(graph).restore(str(TF1), variables={"other": 1})
    assert v["other"] == 1 and "dense/bias" in v


def test_restore_into_session(graph):
    sess = jaxmeta.Session(graph)
    Saver(graph).restore(sess, str(TF1 / "model.ckpt-7"))
    np.testing.assert_array_equal(sess.variables["dense/bias"], _expected("dense/bias"))


def test_dict_var_list_saver():
    graph = jaxmeta.import_meta_graph(str(TF1 / "renamed.ckpt.meta"))
    saver = Saver(graph)
    assert {s.key: s.variable for s in saver.restore_specs} == {"renamed/kernel": "dense/kernel",
                                                                "renamed/step": "global_step"}
    v = saver.restore(str(TF1 / "renamed.ckpt"))
    assert set(v) == {"dense/kernel", "global_step"}
    np.testing.assert_array_equal(v["dense/kernel"], _expected("dense/kernel"))


def test_other_saver_of_same_graph(graph):
    """The graph of model.ckpt-7.meta also holds the second saver (save_1)."""
    other = jaxmeta.import_meta_graph(str(TF1 / "renamed.ckpt.meta")).saver_def
    v = Saver(graph, other).restore(str(TF1 / "renamed.ckpt"))
    assert set(v) == {"dense/kernel", "global_step"}


def test_every_offender_listed(graph):
    other = jaxmeta.import_meta_graph(str(TF1 / "renamed.ckpt.meta"))
    with pytest.raises(CheckpointError) as err:
        Saver(other).restore(str(TF1 / "model.ckpt-7"))
    assert "dense/kernel" in str(err.value) and "global_step" in str(err.value) and "partial=True" in str(err.value)


def test_partial(graph):
    v = Saver(graph).restore(str(TF1 / "renamed.ckpt"), partial=True)
    assert v == {}


def test_shape_mismatch_listed(graph, tmp_path):
    from jaxmeta.checkpoint import write_checkpoint

    r = CheckpointReader(str(TF1 / "model.ckpt-7"))
    tensors = {n: r.get_tensor(n) for n, _ in r.list_variables()}
    tensors["dense/kernel"] = np.zeros((4, 3), np.float32)
    tensors["dense/bias"] = np.zeros(4, np.float64)
    write_checkpoint(str(tmp_path / "m"), tensors)
    with pytest.raises(CheckpointError) as err:
        Saver(graph).restore(str(tmp_path / "m"), partial=True)
    assert "dense/kernel" in str(err.value) and "float64" in str(err.value)


def test_save_roundtrip_and_max_to_keep(graph, tmp_path):
    saver = Saver(graph)
    v = saver.restore(str(TF1 / "model.ckpt-7"))
    saver.saver_def.max_to_keep = 2
    prefixes = [saver.save(v, str(tmp_path / "model.ckpt"), global_step=step) for step in (1, 2, 3)]
    assert prefixes[-1] == str(tmp_path / "model.ckpt-3")
    assert not os.path.exists(prefixes[0] + ".index")
    assert jaxmeta.checkpoint.latest_checkpoint(str(tmp_path)) == prefixes[-1]
    r_ours, r_tf = CheckpointReader(prefixes[-1]), CheckpointReader(str(TF1 / "model.ckpt-7"))
    for name, _ in r_tf.list_variables():
        ours, theirs = r_ours.get_tensor(name), r_tf.get_tensor(name)
        if name == "res/weights":  # float64 held as float32 while x64 is off: the dtype comes back, not the bits
            assert ours.dtype == theirs.dtype == np.float64
            np.testing.assert_allclose(ours, theirs, rtol=1e-6)
        else:
            assert_same(ours, theirs)  # int64 global_step comes back as int64
    assert jaxmeta.checkpoint.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths == prefixes[1:]


def test_save_missing_variable(graph, tmp_path):
    with pytest.raises(CheckpointError, match="lacks"):
        Saver(graph).save({}, str(tmp_path / "m"))


@pytest.mark.oracle
def test_tensorflow_restores_what_we_save(graph, tmp_path):
    tf = pytest.importorskip("tensorflow")
    tf1 = tf.compat.v1
    saver = Saver(graph)
    v = saver.restore(str(TF1 / "model.ckpt-7"))
    v["dense/bias"] = v["dense/bias"] + 1
    prefix = saver.save(v, str(tmp_path / "model.ckpt"), global_step=8, write_meta_graph=False)
    with tf.Graph().as_default():
        tf_saver = tf1.train.import_meta_graph(str(TF1 / "model.ckpt-7.meta"))
        with tf1.Session() as sess:
            tf_saver.restore(sess, prefix)
            got = sess.run({name: f"{name}:0" for name in ("dense/bias", "emb/part_2", "vocab")})
            step = sess.run("global_step/Read/ReadVariableOp:0")
    np.testing.assert_array_equal(got["dense/bias"], _expected("dense/bias") + 1)
    np.testing.assert_array_equal(got["emb/part_2"], _expected("emb")[7:])
    assert got["vocab"].tolist() == _expected("vocab").tolist() and step == 7


@pytest.mark.parametrize("folder", ["v1", "v2_sharded"])
def test_restore_other_layouts_by_key(folder, graph):
    """A V1 or sharded checkpoint of the same variables restores through the same saver."""
    prefix = jaxmeta.checkpoint.latest_checkpoint(str(FIXTURES / folder))
    v = Saver(graph).restore(prefix, partial=True)
    np.testing.assert_array_equal(v["emb/part_0"], _expected("emb")[:4])


def test_copied_fixture_restores(graph, tmp_path):
    folder = copy_fixture("v2_tf1", tmp_path)
    (folder / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt-7"\n')
    assert "dense/bias" in Saver(graph).restore(str(folder))


def test_restore_node_keys_read_once(graph, monkeypatch):
    """Each restore node's key constants are decoded once, not once per variable (was quadratic)."""
    from jaxmeta import _saver

    calls = []
    real = _saver._const_strings
    monkeypatch.setattr(_saver, "_const_strings", lambda *a: calls.append(a[1].node) or real(*a))
    specs = Saver(graph).restore_specs
    assert len(calls) == len(set(calls)) < len(specs)


@pytest.mark.parametrize("default_device", [False, True])
def test_device_put_all_is_jax_device_put(default_device):
    """The restore's batched transfer returns what `jax.device_put` would: values, dtype, placement."""
    import jax
    import ml_dtypes

    from jaxmeta._saver import _device_put_all

    values = [np.arange(6, dtype=np.float32).reshape(2, 3), np.int32(7) * np.ones((), np.int32),
              np.array([True, False]), np.ones((0, 4), np.float32), np.ones(3, ml_dtypes.bfloat16)]
    with jax.default_device(jax.devices()[-1]) if default_device else contextlib.nullcontext():
        ours, theirs = _device_put_all(values), jax.device_put(values)
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(a, jax.Array) and a.aval == b.aval and a.sharding == b.sharding
        assert a.committed == b.committed
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_reports_progress_per_tensor(graph):
    seen = []
    Saver(graph).restore(str(TF1 / "model.ckpt-7"), progress=lambda key, n: seen.append((key, n)))
    reader = CheckpointReader(str(TF1 / "model.ckpt-7"))
    keys = {s.key for s in Saver(graph).restore_specs}
    assert sorted(k for k, _ in seen) == sorted(keys)
    assert all(n == reader.nbytes(k) for k, n in seen if reader.get_variable_to_dtype_map()[k].kind != "O")
