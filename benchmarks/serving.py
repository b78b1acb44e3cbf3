"""Serving from strings: serialized `tf.train.Example`s in, class names out, jaxmeta vs TF1.

Builds (with TensorFlow, in this process) an Estimator-era serving graph: `tf.parse_example` of
dense floats and a categorical string, a vocabulary table with OOV buckets and an embedding, a
three-layer MLP, and class names from `index_to_string_table_from_tensor`. Times, taking turns
in one process, `Session.run` of the class names and probabilities in TF1, in a jaxmeta `Session`
(host and device stages: parse -> compiled model -> names, `jaxmeta._staging`) and in a jaxmeta
`Session(jit=False)` (op by op, what such signatures ran before the stages). Prints a markdown
table of medians [min–max] and the ratios to TF; `--out FILE` also writes it.

    python benchmarks/serving.py [--repeats 50] [--batches 1,64,512] [--out benchmarks/results/serving.md]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batches", default="1,64,512")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    import jaxmeta

    models._v1(tf)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        examples, fetches = _build(tf)
        init = [v1.global_variables_initializer(), v1.tables_initializer()]
        meta = v1.train.export_meta_graph(graph=graph)
    tf_sess = v1.Session(graph=graph)
    tf_sess.run(init)
    with graph.as_default():
        variables = {v.op.name: tf_sess.run(v) for v in v1.global_variables()}
    ours = jaxmeta.import_meta_graph(meta)
    names = [t.name for t in fetches]
    staged = jaxmeta.Session(ours, variables)
    plain = jaxmeta.Session(ours, variables, jit=False)
    rng = np.random.default_rng(0)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        serialized = _examples(tf, batch, rng)
        want = tf_sess.run(fetches, {examples: serialized})
        for sess in (staged, plain):  # first calls (compiles) untimed; the same answers as TF
            got = sess.run(names, {"examples:0": serialized})
            assert got[0].tolist() == want[0].tolist(), "class names differ from TF's"
            np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
        times = _timed_alternately([
            lambda s=serialized: tf_sess.run(fetches, {examples: s}),
            lambda s=serialized: staged.run(names, {"examples:0": s}),
            lambda s=serialized: plain.run(names, {"examples:0": s}),
        ], args.repeats)
        rows.append((batch, *[(statistics.median(t), min(t), max(t)) for t in times]))
        print(f"[batch {batch}] " + ", ".join(f"{k} {statistics.median(t) * 1e3:.2f} ms" for k, t in
                                              zip(["TF", "staged", "op by op"], times)), file=sys.stderr, flush=True)
    lines = [
        "# Serving from serialized Examples", "",
        f"`python benchmarks/serving.py --repeats {args.repeats} --batches {args.batches}`: one process, "
        "the three taking turns; milliseconds per `Session.run` (class names and probabilities from "
        f"serialized Examples: parse, vocabulary, embedding, 3 × {WIDTH} MLP, names), medians [min–max]. "
        f"{platform.machine()}, {os.cpu_count()} CPUs, jax {__import__('jax').__version__}, "
        f"TensorFlow {tf.__version__}.", "",
        "| batch | TF1 | jaxmeta, stages | jaxmeta, op by op | stages / TF | op by op / TF |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, tf_t, st, pl in rows:
        lines.append(f"| {batch} | {_cell(tf_t)} | {_cell(st)} | {_cell(pl)} | {st[0] / tf_t[0]:.2f} | "
                     f"{pl[0] / tf_t[0]:.2f} |")
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
