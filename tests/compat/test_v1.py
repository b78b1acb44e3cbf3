"""`jaxmeta.compat.v1`: the TF1 MetaGraph guide's snippets, verbatim but for the import line.

The bundled MNIST MLP (`examples/model/mnist_mlp-100.*`, built by `tests/fixtures/generate.py`)
is copied into a temporary directory under the guide's file names (`my-save-dir/my-model-10000`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_same_summary
from test_summary import read_records

import jaxmeta
import jaxmeta.compat.v1 as tf
from jaxmeta.proto import meta_graph_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "examples", "model")
rng = np.random.default_rng(0)
IMAGES = rng.random((16, 784), dtype=np.float32)
LABELS = rng.integers(0, 10, size=16).astype(np.int32)
FEED = {"images:0": IMAGES, "labels:0": LABELS}


def _copy_model(directory, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    for suffix in ("meta", "index", "data-00000-of-00001"):
        shutil.copy(
            os.path.join(MODEL, f"mnist_mlp-100.{suffix}"), os.path.join(directory, f"{name}.{suffix}")
        )
    return os.path.join(directory, name)


@pytest.fixture(autouse=True)
def guide_dir(tmp_path, monkeypatch):
    """A working directory holding `my-save-dir/my-model-10000.*`, and a fresh default graph."""
    _copy_model(tmp_path / "my-save-dir", "my-model-10000")
    monkeypatch.chdir(tmp_path)
    tf.reset_default_graph()
    yield tmp_path
    tf.reset_default_graph()


def _checkpoint_values(prefix: str) -> dict[str, np.ndarray]:
    with jaxmeta.CheckpointReader(prefix) as reader:
        return {key: np.asarray(reader.get_tensor(key)) for key in reader.get_variable_to_shape_map()}


# --- the guide's snippets ----------------------------------------------------------------------------


def test_snippet_restore_and_continue_training(guide_dir):
    # The guide's "continue training" snippet; `feed_dict={...}` filled in, 1000 steps cut to 5.
    losses = []
    with tf.Session() as sess:
        new_saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
        new_saver.restore(sess, "my-save-dir/my-model-10000")
        # tf.get_collection() returns a list. In this example we only want the first one.
        train_op = tf.get_collection("train_op")[0]
        loss = tf.get_collection("loss")[0]
        for step in range(5):  # noqa: B007 (the guide saves with global_step=step)
            sess.run(train_op, feed_dict={"images:0": IMAGES, "labels:0": LABELS})
            losses.append(float(sess.run(loss, feed_dict=FEED)))
        # Saves the model after training
        prefix = new_saver.save(sess, "my-model", global_step=step)
    assert prefix == "my-model-4"  # TF returns the prefix, the relative path kept
    for suffix in (".index", ".meta", ".data-00000-of-00001"):
        assert os.path.exists(prefix + suffix)
    assert tf.train.latest_checkpoint(".").endswith("my-model-4")
    assert losses[-1] < losses[0]
    before, after = _checkpoint_values("my-save-dir/my-model-10000"), _checkpoint_values(prefix)
    assert sorted(before) == sorted(after)
    assert int(after["global_step"]) == int(before["global_step"]) + 5  # minimize(global_step=) ran 5 times
    assert not np.allclose(before["hidden1/weights"], after["hidden1/weights"])


def test_snippet_latest_checkpoint_hparams(guide_dir):
    train_dir = "my-save-dir"
    with open(os.path.join(train_dir, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "my-model-10000"\n')
    # The guide's snippet:
    filename = ".".join([tf.train.latest_checkpoint(train_dir), "meta"])
    tf.train.import_meta_graph(filename)
    hparams = tf.get_collection("hparams")
    assert filename == os.path.join(train_dir, "my-model-10000.meta")
    assert hparams == [b"lr=0.01"]  # a bytes_list collection, as TF gives it back
    state = tf.train.get_checkpoint_state(train_dir)
    assert state.model_checkpoint_path.endswith("my-model-10000")


def test_snippet_export_meta_graph(guide_dir):
    tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
    meta_graph_def = tf.train.export_meta_graph(
        filename=str(guide_dir / "my-model.meta"), collection_list=["logits"]
    )
    assert list(meta_graph_def.collection_def) == ["logits"]
    assert meta_graph_def.HasField("saver_def")
    again = jaxmeta.import_meta_graph(str(guide_dir / "my-model.meta"))
    assert [t.name for t in again.get_collection("logits")] == [t.name for t in tf.get_collection("logits")]
    assert len(again) == len(tf.get_default_graph())


def test_snippet_reset_default_graph(guide_dir):
    tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
    old = tf.get_default_graph()
    assert len(old) > 0 and tf.get_collection("logits")
    tf.reset_default_graph()
    assert tf.get_default_graph() is not old
    assert len(tf.get_default_graph()) == 0
    assert tf.get_collection("logits") == []


def test_snippet_import_and_extend(guide_dir):
    # The guide's "import and extend" pattern: the import half runs as written ...
    with tf.Session() as sess:
        new_saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
        new_saver.restore(sess, "my-save-dir/my-model-10000")
        logits = tf.get_collection("logits")[0]
        # ... the new ops it then builds are not emulated, and the error says what to do instead.
        for name in ("Variable", "matmul", "nn", "name_scope", "placeholder", "global_variables_initializer"):
            with pytest.raises(NotImplementedError) as info:
                getattr(tf, name)
            message = str(info.value)
            assert f"tf.{name}" in message and "function(fetches, feeds)" in message and "jax" in message
            assert not hasattr(tf, name)
        # The JAX way the message points to: extend the imported graph with jax.numpy.
        f = tf.get_default_graph().function(logits, ["images:0"])
        new_logits = jnp.maximum(f(sess.variables, IMAGES), 0.0) @ jnp.ones((10, 3))
        want = np.maximum(sess.run(logits, feed_dict={"images:0": IMAGES}), 0) @ np.ones((10, 3))
        np.testing.assert_allclose(new_logits, want, rtol=1e-5, atol=1e-5)


def test_saver_var_list_is_unsupported(guide_dir):
    tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
    with pytest.raises(tf.UnsupportedTFAPIError, match="var_list"):
        tf.train.Saver(var_list=tf.trainable_variables())


# --- import_meta_graph returns a Saver or None, as TF documents ----------------------------------------


def _stateless_meta() -> meta_graph_pb2.MetaGraphDef:
    meta = meta_graph_pb2.MetaGraphDef()
    x = meta.graph_def.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = 1
    y = meta.graph_def.node.add(name="y", op="Identity", input=["x"])
    y.attr["T"].type = 1
    return meta


def test_import_without_variables_returns_none(guide_dir):
    assert tf.train.import_meta_graph(_stateless_meta()) is None
    with tf.Session() as sess:
        np.testing.assert_array_equal(sess.run("y:0", feed_dict={"x:0": np.ones(3, np.float32)}), np.ones(3))


def test_import_with_saver_def_returns_saver(guide_dir):
    saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
    assert isinstance(saver, tf.train.Saver)
    assert saver.saver_def.restore_op_name == "save/restore_all"


def test_import_variables_without_saver_def(guide_dir):
    meta = jaxmeta.import_meta_graph("my-save-dir/my-model-10000.meta").export_meta_graph()
    meta.ClearField("saver_def")
    saver = tf.train.import_meta_graph(meta)
    assert saver is not None  # TF builds a new Saver here; jaxmeta's explains what it cannot do
    with tf.Session() as sess, pytest.raises(NotImplementedError, match="without a SaverDef"):
        saver.restore(sess, "my-save-dir/my-model-10000")


def test_import_twice_with_scopes(guide_dir):
    with tf.Session() as sess:
        first = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta", import_scope="a")
        second = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta", import_scope="a")
        assert first.saver_def.restore_op_name == "a/save/restore_all"
        assert second.saver_def.restore_op_name == "a_1/save/restore_all"  # unique scope, as TF
        first.restore(sess, "my-save-dir/my-model-10000")
        second.restore(sess, "my-save-dir/my-model-10000")
        a, b = sess.run(tf.get_collection("logits"), feed_dict={"a/images:0": IMAGES, "a_1/images:0": IMAGES})
        np.testing.assert_allclose(a, b)
        assert len(tf.get_collection(tf.GraphKeys.GLOBAL_VARIABLES, scope="a_1/")) == 7


# --- Saver.save ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int", "name", "op_name", "handle", "variable", "array"])
def test_save_global_step_forms(guide_dir, kind):
    with tf.Session() as sess:
        saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
        saver.restore(sess, "my-save-dir/my-model-10000")
        graph = tf.get_default_graph()
        step = {
            "int": 100,
            "name": "global_step:0",
            "op_name": "global_step",
            "handle": graph.get_tensor_by_name("global_step:0"),
            "variable": next(v for v in tf.global_variables() if v.op_name == "global_step"),
            "array": np.int64(100),
        }[kind]
        prefix = saver.save(sess, "out/model.ckpt", global_step=step, write_meta_graph=kind == "int")
    assert prefix == "out/model.ckpt-100"
    assert os.path.exists(prefix + ".index")
    assert os.path.exists(prefix + ".meta") == (kind == "int")
    assert tf.train.get_checkpoint_state("out").model_checkpoint_path.endswith("model.ckpt-100")


def test_save_meta_graph_suffix(guide_dir):
    with tf.Session() as sess:
        saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
        saver.restore(sess, "my-save-dir/my-model-10000")
        prefix = saver.save(sess, "out/model.ckpt", global_step=7, meta_graph_suffix="metagraph")
    assert os.path.exists(prefix + ".metagraph") and not os.path.exists(prefix + ".meta")
    assert jaxmeta.import_meta_graph(prefix + ".metagraph").saver_def.restore_op_name == "save/restore_all"


def test_save_without_global_step(guide_dir):
    with tf.Session() as sess:
        saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
        saver.restore(sess, "my-save-dir/my-model-10000")
        assert saver.save(sess, "out/model.ckpt") == "out/model.ckpt"
    assert tf.train.latest_checkpoint("out").endswith("model.ckpt")


def test_restore_none_path(guide_dir):
    saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
    with tf.Session() as sess, pytest.raises(ValueError, match="None"):
        saver.restore(sess, tf.train.latest_checkpoint("nowhere"))


# --- Session ---------------------------------------------------------------------------------------------


@pytest.fixture
def sess(guide_dir):
    with tf.Session() as s:
        tf.train.import_meta_graph("my-save-dir/my-model-10000.meta").restore(s, "my-save-dir/my-model-10000")
        yield s


def test_session_fetch_structures(sess):
    graph = tf.get_default_graph()
    logits, loss = tf.get_collection("logits")[0], tf.get_collection("loss")[0]
    want_logits, want_loss = (np.asarray(v) for v in sess.run([logits, loss], feed_dict=FEED))
    assert want_logits.shape == (16, 10) and want_loss.shape == ()
    got = sess.run(
        {"l": logits, "pair": (loss.name, [logits]), "nested": {"loss": loss}},
        feed_dict={graph.get_tensor_by_name("images:0"): IMAGES, "labels:0": LABELS},
    )
    assert set(got) == {"l", "pair", "nested"}
    assert isinstance(got["pair"], tuple) and isinstance(got["pair"][1], list)
    np.testing.assert_allclose(got["l"], want_logits)
    np.testing.assert_allclose(got["pair"][0], want_loss)
    np.testing.assert_allclose(got["pair"][1][0], want_logits)
    np.testing.assert_allclose(got["nested"]["loss"], want_loss)
    single = sess.run(logits.name, feed_dict=FEED)
    np.testing.assert_allclose(single, want_logits)
    (only,) = sess.run((loss,), feed_dict=FEED)
    np.testing.assert_allclose(only, want_loss)


def test_session_runs_ops_for_effect(sess):
    train_op = tf.get_collection(tf.GraphKeys.TRAIN_OP)[0]
    step0 = int(sess.run("global_step:0"))
    assert sess.run(train_op, feed_dict=FEED) is None
    out = sess.run([train_op, "global_step:0"], feed_dict=FEED)
    assert out[0] is None and int(out[1]) == step0 + 2


def test_session_context_manager_closes(guide_dir):
    with tf.Session() as s:
        tf.train.import_meta_graph(_stateless_meta())
        s.run("y:0", feed_dict={"x:0": np.zeros(2, np.float32)})
    with pytest.raises(RuntimeError, match="closed"):
        s.run("y:0", feed_dict={"x:0": np.zeros(2, np.float32)})


def test_session_on_explicit_graph(guide_dir):
    graph = jaxmeta.import_meta_graph(_stateless_meta())
    with tf.Session(graph=graph) as s:
        assert s.graph is graph and tf.get_default_graph() is not graph
        np.testing.assert_array_equal(s.run(["y:0"], {"x:0": np.ones(2, np.float32)})[0], np.ones(2))


# --- collections -----------------------------------------------------------------------------------------


def test_graph_keys_collections(guide_dir):
    tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
    trainable = tf.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES)
    assert len(trainable) == 6 and all(v.trainable for v in trainable)
    assert len(tf.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)) == 7
    assert tf.GraphKeys.VARIABLES == tf.GraphKeys.GLOBAL_VARIABLES == "variables"
    assert tf.GraphKeys.TRAIN_OP == "train_op"
    assert [v.name for v in tf.global_variables()] == [v.name for v in tf.get_collection("variables")]
    assert [v.name for v in tf.get_collection("variables", scope="hidden1")] == [
        "hidden1/weights:0",
        "hidden1/biases:0",
    ]
    assert tf.get_collection("no such collection") == []


def test_get_collection_ref(guide_dir):
    tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
    ref = tf.get_collection_ref("hidden_sizes")
    assert ref == [32, 16]
    ref.append(8)
    assert tf.get_collection("hidden_sizes") == [32, 16, 8]
    copy = tf.get_collection("hidden_sizes")
    copy.append(4)  # get_collection returns a copy
    assert tf.get_collection("hidden_sizes") == [32, 16, 8]
    tf.get_collection_ref("fresh").append(b"x")
    tf.add_to_collection("fresh", b"y")
    assert tf.get_collection("fresh") == [b"x", b"y"]
    meta = tf.train.export_meta_graph(collection_list=["fresh", "hidden_sizes"])
    assert list(meta.collection_def["fresh"].bytes_list.value) == [b"x", b"y"]
    assert list(meta.collection_def["hidden_sizes"].int64_list.value) == [32, 16, 8]


# --- the example script ----------------------------------------------------------------------------------


def test_seed_snippets_example_runs():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "seed_snippets.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for marker in ("snippet 1", "snippet 2", "snippet 3", "snippet 4", "snippet 5", "all snippets ran"):
        assert marker in out, out


# --- summaries -------------------------------------------------------------------------------------------

SUMMARIES = os.path.join(ROOT, "tests", "fixtures", "graphs", "summaries")


def test_summaries_with_a_file_writer(guide_dir):
    # TF1's loop: merge_all, a FileWriter with the session's graph, add_summary per step.
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], np.float32)
    with tf.Session() as sess:
        saver = tf.train.import_meta_graph(SUMMARIES + ".meta")
        saver.restore(sess, SUMMARIES + ".ckpt")
        merged = tf.summary.merge_all()
        assert merged.name == "Merge/MergeSummary:0"
        writer = tf.summary.FileWriter("logs", sess.graph)
        for step in range(2):
            writer.add_summary(sess.run(merged, feed_dict={"x:0": x}), step)
        writer.close()
    with np.load(SUMMARIES + ".expected.npz") as data:
        want = data["out:Merge/MergeSummary:0"].tobytes()
    (name,) = os.listdir("logs")
    events = read_records(os.path.join("logs", name))
    summaries = [e.summary.SerializeToString() for e in events if e.HasField("summary")]
    assert len(summaries) == 2
    for got in summaries:
        assert_same_summary(got, want)


def test_merge_all_without_a_merge_op(guide_dir):
    tf.train.import_meta_graph(SUMMARIES + ".meta")
    assert tf.summary.merge_all("no such collection") is None
    tf.add_to_collection(tf.GraphKeys.SUMMARIES, tf.get_default_graph().get_tensor_by_name("loss:0"))
    with pytest.raises(tf.UnsupportedTFAPIError, match="jaxmeta.summary.merge"):
        tf.summary.merge_all()
