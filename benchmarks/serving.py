"""Graphs fed strings: serving from serialized `tf.train.Example`s, training from feature columns.

Builds (with TensorFlow, in this process) two graphs:
- an Estimator-era serving graph: `tf.parse_example` of dense floats and a categorical string, a
  vocabulary table with OOV buckets and an embedding, a three-layer MLP, and class names from
  `index_to_string_table_from_tensor`;
- a TF1 feature-column model (hashed embedding, vocabulary list, numeric and crossed columns)
  trained with Adagrad from fed strings.

Times, taking turns in one process, `Session.run` in TF1, in a jaxmeta `Session` (host and device
stages: the string ops on the host, the rest compiled, `jaxmeta._staging`) and in a jaxmeta
`Session(jit=False)` (op by op, how such graphs ran before the stages). Checks the answers against
TF's first, then prints a markdown table of medians [min–max] and the ratios to TF; `--out FILE`
also writes it.

    python benchmarks/serving.py [--repeats 50] [--batches 1,64,512] [--train-batch 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models  # noqa: E402  (sets TF's environment before TensorFlow is imported)
from run import _timed_alternately, write_table  # noqa: E402

COLORS = ["red", "green", "blue", "cyan", "mauve", "teal", "olive", "plum"]
SHAPES = ["circle", "square", "star"]
WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "big", "small"]
CLASSES = ["cat", "dog", "eel", "fox", "gnu"]
FEATURES = 32
WIDTH = 256


def _build(tf):
    from tensorflow.python.ops import lookup_ops

    v1 = tf.compat.v1
    examples = v1.placeholder(tf.string, [None], name="examples")
    parsed = v1.parse_example(examples, {"x": v1.FixedLenFeature([FEATURES], tf.float32),
                                         "color": v1.FixedLenFeature([], tf.string, default_value="none")})
    ids = lookup_ops.index_table_from_tensor(tf.constant(COLORS), num_oov_buckets=2).lookup(parsed["color"])
    emb = v1.get_variable("emb", [len(COLORS) + 2, 8])
    h = tf.concat([parsed["x"], tf.nn.embedding_lookup(emb, ids)], 1)
    for i in range(3):
        h = v1.layers.dense(h, WIDTH, activation=tf.nn.relu, name=f"dense{i}")
    probabilities = tf.nn.softmax(v1.layers.dense(h, len(CLASSES), name="logits"))
    names = lookup_ops.index_to_string_table_from_tensor(tf.constant(CLASSES))
    classes = names.lookup(tf.argmax(probabilities, 1))
    return examples, [classes, probabilities]


def _examples(tf, n: int, rng):
    out = []
    for i in range(n):
        feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=rng.standard_normal(FEATURES)))}
        if i % 5:
            feature["color"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[COLORS[i % 9 % 8].encode()]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    import numpy as np

    return np.array(out, object)


def _cell(t: tuple[float, float, float]) -> str:
    return f"{t[0] * 1e3:.2f} [{t[1] * 1e3:.2f}–{t[2] * 1e3:.2f}]"


def _wide_and_deep(tf):
    """TF1 feature columns trained with Adagrad: a hashed color embedding, a shape vocabulary, a
    numeric size and their cross, fed as strings and floats."""
    v1, fc = tf.compat.v1, tf.compat.v1.feature_column
    feats = {"color": v1.placeholder(tf.string, [None, 1], name="color"),
             "shape": v1.placeholder(tf.string, [None, 1], name="shape"),
             "size": v1.placeholder(tf.float32, [None, 1], name="size")}
    label = v1.placeholder(tf.float32, [None, 1], name="label")
    color = fc.categorical_column_with_hash_bucket("color", 11)
    shape = fc.categorical_column_with_vocabulary_list("shape", SHAPES)
    columns = [fc.embedding_column(color, 4), fc.indicator_column(shape), fc.numeric_column("size"),
               fc.indicator_column(fc.crossed_column(["color", "shape"], 17))]
    net = fc.input_layer(feats, columns)
    logits = v1.layers.dense(net, 1)
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits))
    return loss, v1.train.AdagradOptimizer(0.3).minimize(loss)


def _text_rnn(tf):
    """A TF1 text classifier: sentences split into padded words, a vocabulary with an OOV bucket,
    an embedding, `dynamic_rnn` over an LSTM (a v1 while loop) and Adam."""
    from tensorflow.python.ops import lookup_ops

    v1 = tf.compat.v1
    text = v1.placeholder(tf.string, [None], name="text")
    labels = v1.placeholder(tf.int32, [None], name="labels")
    tokens = tf.strings.split(text).to_tensor(default_value="<pad>")
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(tokens, "<pad>"), tf.int32), 1)
    ids = lookup_ops.index_table_from_tensor(tf.constant(WORDS), num_oov_buckets=1).lookup(tokens)
    x = tf.nn.embedding_lookup(v1.get_variable("emb", [len(WORDS) + 1, 32]), ids)
    _, state = v1.nn.dynamic_rnn(v1.nn.rnn_cell.LSTMCell(64), x, sequence_length=lengths, dtype=tf.float32)
    logits = v1.layers.dense(state.h, 2)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    return loss, v1.train.AdamOptimizer(0.01).minimize(loss)


def _text_rnn_batch(n: int, rng) -> dict:
    import numpy as np

    vocabulary = WORDS + ["unknown"]
    lines = [" ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), 12)) for _ in range(n)]
    return {"text:0": np.array([line.encode() for line in lines], object),
            "labels:0": rng.integers(0, 2, n).astype(np.int32)}


def _wide_and_deep_batch(n: int, rng) -> dict:
    import numpy as np

    return {"color:0": np.array([[COLORS[i]] for i in rng.integers(0, len(COLORS), n)], object),
            "shape:0": np.array([[SHAPES[i]] for i in rng.integers(0, len(SHAPES), n)], object),
            "size:0": rng.standard_normal((n, 1)).astype(np.float32),
            "label:0": rng.integers(0, 2, (n, 1)).astype(np.float32)}


def _sessions(tf, build):
    """TF's Session and jaxmeta's two (stages, op by op) over the graph `build(tf)` makes, from
    the same initial variables; returns (graph, what build returned, the three sessions)."""
    import jaxmeta

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        built = build(tf)
        init = [v1.global_variables_initializer(), v1.tables_initializer()]
        meta = v1.train.export_meta_graph(graph=graph)
    tf_sess = v1.Session(graph=graph)
    tf_sess.run(init)
    with graph.as_default():
        variables = {v.op.name: tf_sess.run(v) for v in v1.global_variables()}
    ours = jaxmeta.import_meta_graph(meta)
    return graph, built, tf_sess, jaxmeta.Session(ours, variables), jaxmeta.Session(ours, variables, jit=False)


def _serving_rows(tf, args) -> list:
    import numpy as np

    graph, (examples, fetches), tf_sess, staged, plain = _sessions(tf, _build)
    names = [t.name for t in fetches]
    rng = np.random.default_rng(0)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        serialized = _examples(tf, batch, rng)
        want = tf_sess.run(fetches, {examples: serialized})
        for sess in (staged, plain):  # first calls (compiles) untimed; the same answers as TF
            got = sess.run(names, {"examples:0": serialized})
            assert got[0].tolist() == want[0].tolist(), "class names differ from TF's"
            np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
        rows.append(("serving: Examples to class names", batch, _timed_alternately([
            lambda s=serialized: tf_sess.run(fetches, {examples: s}),
            lambda s=serialized: staged.run(names, {"examples:0": s}),
            lambda s=serialized: plain.run(names, {"examples:0": s}),
        ], args.repeats)))
    return rows


def _training_rows(tf, args) -> list:
    return [_training_row(tf, args, "training: feature columns (Adagrad step)", _wide_and_deep, _wide_and_deep_batch),
            _training_row(tf, args, "training: text LSTM (split, vocabulary, dynamic_rnn; Adam step)", _text_rnn,
                          _text_rnn_batch)]


def _training_row(tf, args, what: str, build, make_batch):
    import numpy as np

    graph, (loss, train), tf_sess, staged, plain = _sessions(tf, build)
    batch = make_batch(args.train_batch, np.random.default_rng(1))
    tf_feed = {graph.get_tensor_by_name(k): v for k, v in batch.items()}
    want = tf_sess.run([loss, train], tf_feed)[0]
    for sess in (staged, plain):  # the first step (planning, compiles) untimed; TF's loss
        np.testing.assert_allclose(sess.run([loss.name, train.name], batch)[0], want, rtol=1e-5)
    fetches = [loss.name, train.name]
    times = _timed_alternately([lambda: tf_sess.run([loss, train], tf_feed), lambda: staged.run(fetches, batch)],
                               args.repeats)
    # op by op, the LSTM's steps take seconds: a few repeats tell enough
    return what, args.train_batch, times + _timed_alternately([lambda: plain.run(fetches, batch)],
                                                              min(args.repeats, 3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batches", default="1,64,512", help="the serving graph's batch sizes")
    parser.add_argument("--train-batch", type=int, default=64, help="the feature-column model's batch size")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)

    import tensorflow as tf

    models._v1(tf)
    rows = _serving_rows(tf, args) + _training_rows(tf, args)
    lines = [
        "# Graphs fed strings: serving from serialized Examples, training from feature columns", "",
        f"`python benchmarks/serving.py --repeats {args.repeats} --batches {args.batches} --train-batch "
        f"{args.train_batch}`: one process, the three taking turns; milliseconds per `Session.run`, medians "
        f"[min–max] of {args.repeats} (op by op, the training rows: of 3). Serving: class names and probabilities from serialized Examples (parse, "
        f"vocabulary, embedding, 3 × {WIDTH} MLP, names). Training: a train step of TF1 feature columns (hashed "
        "embedding, vocabulary list, numeric, crossed), and of a text LSTM, from fed strings. "
        f"{platform.machine()}, {os.cpu_count()} CPUs, jax {__import__('jax').__version__}, "
        f"TensorFlow {tf.__version__}.", "",
        "| graph | batch | TF1 | jaxmeta, stages | jaxmeta, op by op | stages / TF | op by op / TF |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, batch, times in rows:
        tf_t, st, pl = [(statistics.median(t), min(t), max(t)) for t in times]
        print(f"[{what}, batch {batch}] TF {tf_t[0] * 1e3:.2f} ms, stages {st[0] * 1e3:.2f} ms, op by op "
              f"{pl[0] * 1e3:.2f} ms", file=sys.stderr, flush=True)
        lines.append(f"| {what} | {batch} | {_cell(tf_t)} | {_cell(st)} | {_cell(pl)} | {st[0] / tf_t[0]:.2f} | "
                     f"{pl[0] / tf_t[0]:.2f} |")
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
