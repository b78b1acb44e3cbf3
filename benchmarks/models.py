"""Graph builders for `benchmarks/run.py`: TF1 graphs (graph mode, v1 control flow, ref variables).

Each builder takes `(tf, size, quick)` and returns a `ModelSpec` naming the tensors the benchmark
feeds and fetches. `export(name, directory, size, quick)` builds one model with TensorFlow, saves
its checkpoint and MetaGraphDef (`model.ckpt.meta`) and writes `spec.json` next to them, so that
the measuring processes — the jaxmeta one in particular — never need TensorFlow to read the spec.

Only this module and run.py's TF worker import TensorFlow; jaxmeta's package never does.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.compat.v1.layers / rnn_cell need tf_keras


@dataclasses.dataclass
class Feed:
    """A placeholder: tensor name, per-example shape (the batch dimension is prepended), dtype.

    Integer feeds (labels) are drawn in [0, classes).
    """

    name: str
    shape: list[int]
    dtype: str = "float32"
    classes: int = 0


@dataclasses.dataclass
class ModelSpec:
    """What the benchmark runs: inference `fetch` from `infer_feeds`, `train_op` from `train_feeds`."""

    infer_feeds: list[Feed]
    fetch: str
    train_feeds: list[Feed]
    loss: str
    train_op: str
    large_batch: int
    train_batch: int
    description: str = ""
    node_count: int = 0
    checkpoint_bytes: int = 0


def _v1(tf):
    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.disable_control_flow_v2()
    tf.compat.v1.disable_resource_variables()
    tf.get_logger().setLevel("ERROR")
    return tf.compat.v1


def _classifier_loss(tf, logits, classes: int):
    labels = tf.compat.v1.placeholder(tf.int32, [None], name="labels")
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), name="loss")
    return labels, loss


def build_mlp(tf, size: int, quick: bool) -> ModelSpec:
    """The MNIST MLP of the TF1 MetaGraph guide: 784 -> 128 -> 32 -> 10, GradientDescent."""
    v1 = tf.compat.v1
    images = v1.placeholder(tf.float32, [None, 784], name="images")

    def layer(scope, x, n_in, n_out, relu):
        with v1.name_scope(scope):
            w = v1.Variable(tf.random.truncated_normal([n_in, n_out], stddev=1.0 / np.sqrt(n_in)), name="weights")
            b = v1.Variable(tf.zeros([n_out]), name="biases")
            y = tf.matmul(x, w) + b
            return tf.nn.relu(y) if relu else y

    logits = layer("softmax_linear", layer("hidden2", layer("hidden1", images, 784, 128, True), 128, 32, True),
                   32, 10, False)
    labels, loss = _classifier_loss(tf, logits, 10)
    step = v1.train.get_or_create_global_step()
    train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=step)
    x = Feed(images.name, [784])
    return ModelSpec([x], logits.name, [x, Feed(labels.name, [], "int32", 10)], loss.name, train_op.name,
                     large_batch=8 if quick else 256, train_batch=8 if quick else 64,
                     description="TF1 guide MNIST MLP (784-128-32-10), GradientDescent")


def _alias_legacy_layers() -> None:
    """TF 2.21 lazily loads `tf_keras.legacy_tf_layers.normalization` (used by tf_slim's layers), a
    module tf_keras 2.21 ships as `tf_keras.src.legacy_tf_layers`: alias it when it is missing."""
    import importlib
    import sys

    try:
        importlib.import_module("tf_keras.legacy_tf_layers.normalization")
    except ImportError:
        for sub in ("", ".base", ".convolutional", ".core", ".normalization", ".pooling"):
            sys.modules["tf_keras.legacy_tf_layers" + sub] = importlib.import_module("tf_keras.src.legacy_tf_layers" + sub)


def _slim_net(tf, size: int, quick: bool, which: str) -> ModelSpec:
    _alias_legacy_layers()
    import tf_slim as slim
    from tf_slim.nets import inception_v3, resnet_v1

    v1 = tf.compat.v1
    images = v1.placeholder(tf.float32, [None, size, size, 3], name="images")
    if which == "resnet50":
        with slim.arg_scope(resnet_v1.resnet_arg_scope()):
            logits, _ = resnet_v1.resnet_v1_50(images, num_classes=1000, is_training=False)
        if logits.shape.rank == 4:  # this tf_slim version does not squeeze the 1x1 logits
            logits = tf.squeeze(logits, [1, 2], name="logits")
        name = "TF-slim ResNet-v1-50"
    else:
        with slim.arg_scope(inception_v3.inception_v3_arg_scope()):
            logits, _ = inception_v3.inception_v3(images, num_classes=1000, is_training=False,
                                                  create_aux_logits=False)
        name = "TF-slim Inception-v3"
    labels, loss = _classifier_loss(tf, logits, 1000)
    step = v1.train.get_or_create_global_step()
    train_op = v1.train.MomentumOptimizer(0.01, 0.9).minimize(loss, global_step=step)
    x = Feed(images.name, [size, size, 3])
    return ModelSpec([x], logits.name, [x, Feed(labels.name, [], "int32", 1000)], loss.name, train_op.name,
                     large_batch=4 if quick else 8, train_batch=2 if quick else 4,
                     description=f"{name}, eval mode (frozen batch norm), {size}x{size} input, Momentum")


def build_resnet50(tf, size: int, quick: bool) -> ModelSpec:
    return _slim_net(tf, size, quick, "resnet50")


def build_inception3(tf, size: int, quick: bool) -> ModelSpec:
    # Inception-v3's valid-padded stem needs at least 75x75 inputs.
    return _slim_net(tf, max(size, 75), quick, "inception3")


def _sequence_classifier(tf, inputs, last_output, quick: bool, description: str) -> ModelSpec:
    """last output -> dense -> 10 classes, Adam; the spec of a model over `inputs` [None, T, F]."""
    v1 = tf.compat.v1
    logits = v1.layers.dense(last_output, 10, name="logits")
    labels, loss = _classifier_loss(tf, logits, 10)
    step = v1.train.get_or_create_global_step()
    train_op = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=step)
    x = Feed(inputs.name, inputs.shape.as_list()[1:])
    return ModelSpec([x], logits.name, [x, Feed(labels.name, [], "int32", 10)], loss.name, train_op.name,
                     large_batch=8 if quick else 64, train_batch=8 if quick else 32, description=description)


def build_lstm(tf, size: int, quick: bool) -> ModelSpec:
    """`dynamic_rnn` over an LSTMCell (v1 while loop), last output -> dense -> 10 classes, Adam."""
    v1 = tf.compat.v1
    steps, features, units = (8, 16, 32) if quick else (32, 64, 256)
    inputs = v1.placeholder(tf.float32, [None, steps, features], name="sequence")
    outputs, _ = v1.nn.dynamic_rnn(v1.nn.rnn_cell.LSTMCell(units), inputs, dtype=tf.float32)
    return _sequence_classifier(tf, inputs, outputs[:, -1], quick,
                                f"dynamic_rnn LSTMCell({units}), {steps} steps x {features} features, Adam")


def build_static_lstm(tf, size: int, quick: bool) -> ModelSpec:
    """`static_rnn` over two LSTMCells (the recurrence unrolled into ops per step, as TF1's
    `legacy_seq2seq` models are), last output -> dense -> 10 classes, Adam."""
    v1 = tf.compat.v1
    steps, features, units = (8, 16, 32) if quick else (50, 64, 128)
    inputs = v1.placeholder(tf.float32, [None, steps, features], name="sequence")
    cell = v1.nn.rnn_cell.MultiRNNCell([v1.nn.rnn_cell.LSTMCell(units) for _ in range(2)])
    outputs, _ = v1.nn.static_rnn(cell, tf.unstack(inputs, axis=1), dtype=tf.float32)
    return _sequence_classifier(tf, inputs, outputs[-1], quick,
                                f"static_rnn 2 x LSTMCell({units}), {steps} steps x {features} features, Adam")


def build_cnn_train(tf, size: int, quick: bool) -> ModelSpec:
    """A small CNN with batch norm in training mode (UPDATE_OPS) and Adam; 32x32x3 inputs."""
    v1 = tf.compat.v1
    side = 16 if quick else 32
    images = v1.placeholder(tf.float32, [None, side, side, 3], name="images")
    h = images
    for i, filters in enumerate((32, 64, 128)):
        h = v1.layers.conv2d(h, filters, 3, padding="same", use_bias=False, name=f"conv{i}")
        h = tf.nn.relu(v1.layers.batch_normalization(h, training=True, momentum=0.9, name=f"bn{i}"))
        h = v1.layers.max_pooling2d(h, 2, 2)
    logits = v1.layers.dense(v1.layers.flatten(h), 10, name="logits")
    labels, loss = _classifier_loss(tf, logits, 10)
    step = v1.train.get_or_create_global_step()
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
        train_op = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=step)
    x = Feed(images.name, [side, side, 3])
    return ModelSpec([x], logits.name, [x, Feed(labels.name, [], "int32", 10)], loss.name, train_op.name,
                     large_batch=8 if quick else 128, train_batch=8 if quick else 64,
                     description=f"CNN 3x(conv-BN-relu-pool), {side}x{side} input, batch norm in training mode, Adam")


MODELS = {
    "mlp": build_mlp,
    "resnet50": build_resnet50,
    "inception3": build_inception3,
    "lstm": build_lstm,
    "cnn_train": build_cnn_train,
    "static_lstm": build_static_lstm,
}


def export(name: str, directory: str, size: int, quick: bool) -> ModelSpec:
    """Builds model `name`, saves `directory/model.ckpt{.meta,.index,.data-*}` and `spec.json`."""
    import tensorflow as tf

    v1 = _v1(tf)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, "model.ckpt")
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        spec = MODELS[name](tf, size, quick)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, prefix)
        spec.node_count = len(graph.as_graph_def().node)
    spec.checkpoint_bytes = checkpoint_bytes(prefix)
    save_spec(spec, directory)
    return spec


def save_spec(spec: ModelSpec, directory: str) -> None:
    with open(os.path.join(directory, "spec.json"), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(spec), f, indent=1)


def checkpoint_bytes(prefix: str) -> int:
    """Bytes in the checkpoint's data files."""
    directory, stem = os.path.split(prefix)
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.startswith(stem + ".data-"))


def load_spec(directory: str) -> ModelSpec:
    with open(os.path.join(directory, "spec.json"), encoding="utf-8") as f:
        raw = json.load(f)
    raw["infer_feeds"] = [Feed(**f) for f in raw["infer_feeds"]]
    raw["train_feeds"] = [Feed(**f) for f in raw["train_feeds"]]
    return ModelSpec(**raw)


def make_inputs(feeds: list[Feed], batch: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic NumPy values for `feeds` at `batch` (the same in every process)."""
    rng = np.random.default_rng(seed)
    out = []
    for feed in feeds:
        shape = (batch, *feed.shape)
        if feed.classes:
            out.append(rng.integers(0, feed.classes, size=shape).astype(feed.dtype))
        else:
            out.append(rng.standard_normal(shape).astype(feed.dtype))
    return out
