"""`export_meta_graph` (native and `jaxmeta.compat.v1`) checked with TensorFlow as the oracle.

A MetaGraphDef jaxmeta writes must import in TF1 (`tf.compat.v1.train.import_meta_graph` in a
fresh `tf.Graph`), restore the checkpoint and give the same outputs as the original, with its
collections and SaverDef intact; a checkpoint saved by the compat `Saver` after jaxmeta training
must restore in TF with the same values.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from oracle import get_tf

import jaxmeta
import jaxmeta.compat.v1 as v1

pytestmark = pytest.mark.oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = os.path.join(ROOT, "examples", "model", "mnist_mlp-100.meta")
CKPT = os.path.join(ROOT, "examples", "model", "mnist_mlp-100")
DEVICES_META = os.path.join(ROOT, "tests", "fixtures", "graphs", "devices.meta")
DEVICES_CKPT = os.path.join(ROOT, "tests", "fixtures", "graphs", "devices.ckpt")
ALL_KEYS = [
    "hidden_sizes",
    "hparams",
    "inputs",
    "learning_rates",
    "logits",
    "loss",
    "train_op",
    "trainable_variables",
    "variables",
]
rng = np.random.default_rng(0)
IMAGES = rng.random((8, 784), dtype=np.float32)
LABELS = rng.integers(0, 10, size=8).astype(np.int32)


def tf_run(meta_path: str, ckpt: str, *, fetch="logits", feeds=None, clear_devices=False):
    """Imports `meta_path` in a fresh TF graph, restores `ckpt`, runs collection `fetch`'s first item.

    Returns (value, graph, saver_def, variable values); `graph` keeps the device strings TF imported.
    """
    tf = get_tf()
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta_path, clear_devices=clear_devices)
        assert saver is not None
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, ckpt)
            target = graph.get_collection(fetch)[0]
            feed = {graph.get_tensor_by_name(k): v for k, v in (feeds or {"images:0": IMAGES}).items()}
            value = sess.run(target, feed)
            variables = {v.op.name: sess.run(v) for v in tf.compat.v1.global_variables()}
    return value, graph, saver.saver_def, variables


@pytest.fixture(scope="module")
def original():
    return tf_run(META, CKPT)


def _saver_fields(saver_def):
    return (
        saver_def.filename_tensor_name,
        saver_def.save_tensor_name,
        saver_def.restore_op_name,
        saver_def.max_to_keep,
        saver_def.sharded,
        saver_def.version,
    )


@pytest.mark.parametrize("exporter", ["native", "compat"])
@pytest.mark.parametrize("scope", [None, "net"])
@pytest.mark.parametrize("as_text", [False, True])
@pytest.mark.parametrize("collection_list", [None, ["logits", "hparams", "variables"]])
def test_exported_graph_runs_in_tf(tmp_path, original, exporter, scope, as_text, collection_list):
    want_logits, want_graph, want_saver, _ = original
    path = str(tmp_path / ("model.pbtxt" if as_text else "model.meta"))
    kwargs = dict(collection_list=collection_list, as_text=as_text, export_scope=scope)
    if exporter == "native":
        graph = jaxmeta.import_meta_graph(META, import_scope=scope)
        meta = graph.export_meta_graph(path, **kwargs)
    else:
        v1.reset_default_graph()
        v1.train.import_meta_graph(META, import_scope=scope)
        meta = v1.train.export_meta_graph(filename=path, **kwargs)
        v1.reset_default_graph()
    with open(path, "rb") as f:
        head = f.read(64)
    assert head.lstrip().startswith(b"meta_info_def") == as_text
    assert all(not n.name.startswith("net/") for n in meta.graph_def.node)

    got_logits, tf_graph, saver_def, _ = tf_run(path, CKPT)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-6, atol=1e-6)
    keys = ALL_KEYS if collection_list is None else sorted(collection_list)
    assert sorted(tf_graph.get_all_collection_keys()) == keys
    for key in keys:
        got = tf_graph.get_collection(key)
        want = want_graph.get_collection(key)
        assert [getattr(i, "name", i) for i in got] == [getattr(i, "name", i) for i in want], key
    assert _saver_fields(saver_def) == _saver_fields(want_saver)
    assert len(tf_graph.get_operations()) == len(want_graph.get_operations())


@pytest.mark.parametrize("clear_devices", [False, True])
def test_clear_devices(tmp_path, clear_devices):
    tf = get_tf()
    path = str(tmp_path / "devices.meta")
    meta = jaxmeta.import_meta_graph(DEVICES_META).export_meta_graph(path, clear_devices=clear_devices)
    devices = {n.device for n in meta.graph_def.node}
    if clear_devices:
        assert devices == {""}
    else:
        assert any("GPU" in d for d in devices)
    # TF keeps the exported device strings ...
    tf_graph = tf.Graph()
    with tf_graph.as_default():
        tf.compat.v1.train.import_meta_graph(path)
    tf_devices = {op.device for op in tf_graph.get_operations()}
    assert (tf_devices == {""}) == clear_devices
    # ... and runs the exported graph like the original (this CPU-only machine has no /job:ps, so TF
    # clears the devices of the one that still names them).
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.0
    run = dict(fetch="outputs", feeds={"x:0": x}, clear_devices=not clear_devices)
    got = tf_run(path, DEVICES_CKPT, **run)[0]
    want = tf_run(DEVICES_META, DEVICES_CKPT, **{**run, "clear_devices": True})[0]
    np.testing.assert_allclose(got, want)


def test_export_scope_keeps_only_the_scope(tmp_path, original):
    # Two copies side by side; exporting one scope gives a graph TF runs with the other left out.
    graph = jaxmeta.import_meta_graph(META, import_scope="a")
    jaxmeta.import_meta_graph(META, import_scope="b", graph=graph)
    path = str(tmp_path / "b.meta")
    meta = graph.export_meta_graph(path, export_scope="b")
    assert len(meta.graph_def.node) * 2 == len(graph)
    got, tf_graph, _, _ = tf_run(path, CKPT)
    np.testing.assert_allclose(got, original[0], rtol=1e-6, atol=1e-6)
    assert not any(op.name.startswith(("a/", "b/")) for op in tf_graph.get_operations())


def test_compat_saver_checkpoint_restores_in_tf(tmp_path):
    """Train a few steps in jaxmeta, save through the compat Saver, restore in TF1."""
    v1.reset_default_graph()
    with v1.Session() as sess:
        saver = v1.train.import_meta_graph(META)
        saver.restore(sess, CKPT)
        train_op = v1.get_collection("train_op")[0]
        for _ in range(3):
            sess.run(train_op, feed_dict={"images:0": IMAGES, "labels:0": LABELS})
        logits = np.asarray(sess.run(v1.get_collection("logits")[0], feed_dict={"images:0": IMAGES}))
        prefix = saver.save(sess, str(tmp_path / "model.ckpt"), global_step="global_step:0")
        ours = {k: np.asarray(v) for k, v in sess.variables.items()}
    v1.reset_default_graph()
    assert prefix == str(tmp_path / "model.ckpt-103")
    # Both the .meta the compat Saver wrote and the original one import in TF with this checkpoint.
    for meta in (prefix + ".meta", META):
        tf_logits, _, _, tf_vars = tf_run(meta, prefix)
        assert sorted(tf_vars) == sorted(ours)
        for name, value in tf_vars.items():
            np.testing.assert_array_equal(value, ours[name].astype(value.dtype), err_msg=name)
        assert int(tf_vars["global_step"]) == 103
        np.testing.assert_allclose(tf_logits, logits, rtol=1e-5, atol=1e-5)
    assert get_tf().compat.v1.train.latest_checkpoint(str(tmp_path)) == prefix
