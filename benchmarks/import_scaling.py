"""Graph import time: TF-slim Inception-v3's training graph, and linearity in the node count.

Builds (with TensorFlow, in this process) TF-slim Inception-v3 in training mode — batch norm
updates, auxiliary logits, gradients and a Momentum `train_op`, over 10,000 nodes — and chains of
N small dense layers, exports each as a MetaGraphDef, and times `jaxmeta.import_meta_graph`
(from the file, XLA compilation not involved) against `tf.compat.v1.train.import_meta_graph`.
Prints a markdown table; `--out FILE` also writes it.

    python benchmarks/import_scaling.py [--repeats 5] [--out benchmarks/results/import.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models  # noqa: E402  (sets TF's environment before TensorFlow is imported)
from run import _timed, write_table  # noqa: E402


def _inception_train(tf):
    models._alias_legacy_layers()
    import tf_slim as slim
    from tf_slim.nets import inception_v3

    v1 = tf.compat.v1
    images = v1.placeholder(tf.float32, [None, 299, 299, 3], name="images")
    labels = v1.placeholder(tf.int32, [None], name="labels")
    with slim.arg_scope(inception_v3.inception_v3_arg_scope()):
        logits, end_points = inception_v3.inception_v3(images, num_classes=1001, is_training=True)
    loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    loss += 0.4 * v1.losses.sparse_softmax_cross_entropy(labels, end_points["AuxLogits"])
    step = v1.train.get_or_create_global_step()
    with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
        v1.train.MomentumOptimizer(0.01, 0.9).minimize(loss, global_step=step)
    return "TF-slim Inception-v3 training graph (batch norm updates, aux logits, Momentum)"


def _dense_chain(layers: int):
    def build(tf):
        v1 = tf.compat.v1
        h = v1.placeholder(tf.float32, [None, 8], name="x")
        for i in range(layers):
            h = tf.nn.relu(v1.layers.dense(h, 8, name=f"dense{i}"))
        return f"a chain of {layers} dense layers (inference)"

    return build


def _export(build, path: str) -> tuple[str, int]:
    import tensorflow as tf

    models._v1(tf)
    graph = tf.Graph()
    with graph.as_default():
        description = build(tf)
        tf.compat.v1.train.export_meta_graph(filename=path, graph=graph)
        return description, len(graph.get_operations())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chains", default="250,500,1000,2000", help="dense-chain lengths")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)

    import tensorflow as tf

    import jaxmeta

    cases = [("inception3_train", _inception_train)]
    cases += [(f"chain{n}", _dense_chain(int(n))) for n in args.chains.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in cases:
            path = os.path.join(tmp, name + ".meta")
            description, nodes = _export(build, path)
            size = os.path.getsize(path)
            ours = _timed(lambda path=path: jaxmeta.import_meta_graph(path), args.repeats)

            def tf_import(path=path):
                with tf.Graph().as_default():
                    tf.compat.v1.train.import_meta_graph(path)

            theirs = _timed(tf_import, args.repeats)
            rows.append((description, nodes, size, statistics.median(ours), min(ours), max(ours),
                         statistics.median(theirs)))
            print(f"[{name}] {nodes} nodes: jaxmeta {statistics.median(ours):.3f} s, TF "
                  f"{statistics.median(theirs):.3f} s", file=sys.stderr, flush=True)
    lines = [
        "# Graph import time", "",
        f"`python benchmarks/import_scaling.py --repeats {args.repeats}`; medians of {args.repeats}, "
        "[min–max]. jaxmeta: `jaxmeta.import_meta_graph(path)`; TF: `tf.compat.v1.train.import_meta_graph` "
        "into a fresh graph, in the same process. Target: ≤ 1 s for the 10,000-node Inception-v3 training "
        "graph, time linear in the node count (last column roughly constant).", "",
        "| graph | nodes | .meta MB | jaxmeta (s) | TF (s) | jaxmeta/TF | jaxmeta µs per node |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for description, nodes, size, med, lo, hi, tf_med in rows:
        lines.append(f"| {description} | {nodes} | {size / 1e6:.1f} | {med:.3f} [{lo:.3f}–{hi:.3f}] | "
                     f"{tf_med:.3f} | {med / tf_med:.2f} | {med / nodes * 1e6:.1f} |")
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
