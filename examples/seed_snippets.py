"""Every snippet of the TF1 MetaGraph guide, run through `jaxmeta.compat.v1` instead of TensorFlow.

The snippets are TF1's own ("Exporting and Importing a MetaGraph"), with one changed line:
`import jaxmeta.compat.v1 as tf`. They run on the bundled model (examples/model/, the guide's MNIST
MLP that tests/fixtures/generate.py builds with TensorFlow), copied into a temporary directory under
the guide's file names. Each snippet prints what it did.

Run: python examples/seed_snippets.py
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import jax.numpy as jnp
import numpy as np

import jaxmeta.compat.v1 as tf

MODEL_DIR = pathlib.Path(__file__).resolve().parent / "model"


def setup(workdir: pathlib.Path) -> None:
    """Copies the bundled model to `my-save-dir/my-model-10000.*` and writes its state file."""
    save_dir = workdir / "my-save-dir"
    save_dir.mkdir()
    for suffix in ("meta", "index", "data-00000-of-00001"):
        shutil.copy(MODEL_DIR / f"mnist_mlp-100.{suffix}", save_dir / f"my-model-10000.{suffix}")
    (save_dir / "checkpoint").write_text('model_checkpoint_path: "my-model-10000"\n')


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((32, 784), dtype=np.float32), rng.integers(0, 10, size=32).astype(np.int32)


def snippet_continue_training() -> None:
    print("snippet 1: import a MetaGraph, restore its checkpoint, continue training, save")
    images, labels = batch()
    with tf.Session() as sess:
        new_saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
        new_saver.restore(sess, "my-save-dir/my-model-10000")
        # tf.get_collection() returns a list. In this example we only want the first one.
        train_op = tf.get_collection("train_op")[0]
        loss = tf.get_collection("loss")[0]
        print(
            f"  loss before: {float(sess.run(loss, feed_dict={'images:0': images, 'labels:0': labels})):.4f}"
        )
        for step in range(20):  # noqa: B007 (the guide saves with global_step=step)
            sess.run(train_op, feed_dict={"images:0": images, "labels:0": labels})
        print(
            f"  loss after {step + 1} steps of the graph's own train_op: "
            f"{float(sess.run(loss, feed_dict={'images:0': images, 'labels:0': labels})):.4f}"
        )
        # Saves the model after training
        prefix = new_saver.save(sess, "my-model", global_step=step)
        print(
            f"  saved {prefix} (.index, .data, .meta), global_step variable = {int(sess.run('global_step:0'))}"
        )


def snippet_hparams() -> None:
    print("snippet 2: find the latest checkpoint's MetaGraph and read hyper-parameters from a collection")
    tf.reset_default_graph()
    train_dir = "."
    filename = ".".join([tf.train.latest_checkpoint(train_dir), "meta"])
    tf.train.import_meta_graph(filename)
    hparams = tf.get_collection("hparams")
    print(f"  imported {filename}; hparams = {hparams}, hidden_sizes = {tf.get_collection('hidden_sizes')}")


def snippet_export() -> None:
    print("snippet 3: export the (default) graph as a MetaGraphDef, all of it and a subset of collections")
    path = os.path.abspath("my-model.meta")
    meta_graph_def = tf.train.export_meta_graph(filename=path)
    print(
        f"  {path}: {len(meta_graph_def.graph_def.node)} nodes, collections {sorted(meta_graph_def.collection_def)}"
    )
    meta_graph_def = tf.train.export_meta_graph(filename=path, collection_list=["logits"])
    print(f"  with collection_list=['logits']: collections {sorted(meta_graph_def.collection_def)}")
    text = tf.train.export_meta_graph(filename="my-model.pbtxt", as_text=True, clear_devices=True)
    print(f"  as_text=True, clear_devices=True: my-model.pbtxt, saver {text.saver_def.restore_op_name!r}")


def snippet_import_twice() -> None:
    print("snippet 4: import the same MetaGraph twice into the default graph, under scopes")
    tf.reset_default_graph()
    images, _ = batch(1)
    with tf.Session() as sess:
        for scope in ("model_a", "model_b"):
            saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta", import_scope=scope)
            saver.restore(sess, "my-save-dir/my-model-10000")
            print(f"  {scope}: saver {saver.saver_def.restore_op_name!r}")
        a, b = sess.run(
            tf.get_collection("logits"), feed_dict={"model_a/images:0": images, "model_b/images:0": images}
        )
        print(f"  {len(tf.get_default_graph())} nodes; both copies agree: {bool(np.allclose(a, b))}")
        print(f"  graph without variables returns no Saver: {tf.train.import_meta_graph(stateless_meta())}")


def stateless_meta():
    from jaxmeta.proto import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    x = meta.graph_def.node.add(name="x", op="Placeholder")
    x.attr["dtype"].type = 1
    return meta


def snippet_import_and_extend() -> None:
    print("snippet 5: import and extend the model")
    tf.reset_default_graph()
    images, labels = batch(2)
    with tf.Session() as sess:
        new_saver = tf.train.import_meta_graph("my-save-dir/my-model-10000.meta")
        new_saver.restore(sess, "my-save-dir/my-model-10000")
        logits = tf.get_collection("logits")[0]
        try:
            tf.Variable  # noqa: B018  (the guide builds new layers with tf.Variable/tf.matmul here)
        except NotImplementedError as err:
            print(f"  tf.Variable: {type(err).__name__}: {str(err)[:110]}...")
        # The JAX way: the imported graph as a pure function, extended with jax.numpy.
        f = tf.get_default_graph().function(logits, ["images:0"])
        new_weights = jnp.full((10, 3), 0.1)
        new_logits = jnp.maximum(f(sess.variables, images), 0.0) @ new_weights
        print(
            f"  extended in JAX: new logits {tuple(new_logits.shape)} from logits {tuple(np.shape(sess.run(logits, {'images:0': images})))}"
        )
        out = sess.run(
            {"loss": tf.get_collection("loss")[0], "logits": [logits]},
            {"images:0": images, "labels:0": labels},
        )
        print(f"  sess.run with a dict fetch: keys {sorted(out)}, loss {float(out['loss']):.4f}")


def snippet_reset() -> None:
    print("snippet 6: reset the default graph")
    before = len(tf.get_default_graph())
    tf.reset_default_graph()
    print(f"  {before} nodes before, {len(tf.get_default_graph())} after")


def main() -> None:
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        setup(pathlib.Path(tmp))
        os.chdir(tmp)
        try:
            snippet_continue_training()
            snippet_hparams()
            snippet_export()
            snippet_import_twice()
            snippet_import_and_extend()
            snippet_reset()
        finally:
            os.chdir(cwd)
    print("all snippets ran")


if __name__ == "__main__":
    main()
