"""The `summary` family against TensorFlow: each summary op's serialized `Summary`, byte for byte
where TF's encoding is fixed (scalars, histograms, tensors, WAV audio) and pixel for pixel for
images (PNG's compression is the encoder's choice)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import get_tf, ph, run_tf

import jaxmeta
from jaxmeta.proto import summary_pb2

pytestmark = pytest.mark.oracle


def randn(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def jaxmeta_bytes(run, feeds):
    """The fetches as jaxmeta serializes them: Session (jit and not) and jax.jit(graph.function)."""
    results = []
    for jit in (True, False):
        with jaxmeta.Session(run.graph, run.variables, jit=jit) as sess:
            results.append(sess.run(run.fetch_names, feeds))
    f = jax.jit(run.graph.function(run.fetch_names, feeds=list(feeds)))
    summaries = f(run.variables, *feeds.values())
    assert all(isinstance(s, jaxmeta.summary.Summary) for s in summaries)
    results.append([bytes(s) for s in summaries])
    return results


def check_bytes(build, feeds=None):
    feeds = feeds or {}
    run = run_tf(build, feeds)
    for got in jaxmeta_bytes(run, feeds):
        for name, g, want in zip(run.fetch_names, got, run.expected):
            assert g == want, f"{name}:\n{summary_pb2.Summary.FromString(g)}\nTF:\n{summary_pb2.Summary.FromString(want)}"


def test_scalar_summaries():
    def build(tf):
        x = ph(tf, "x", randn(4))
        return [
            tf.compat.v1.summary.scalar("mean", tf.reduce_mean(x)),
            tf.compat.v1.summary.scalar("count", tf.constant(3, tf.int64)),
            tf.compat.v1.summary.scalar("big", tf.constant(2**40 + 1, tf.int64)),
            tf.compat.v1.summary.scalar("double", tf.constant(0.1, tf.float64)),
            tf.compat.v1.summary.scalar("half", tf.cast(x[0], tf.float16)),
            tf.raw_ops.ScalarSummary(tags=tf.constant([["a", "b"], ["c", "d"]]), values=tf.reshape(x, [2, 2])),
        ]

    check_bytes(build, {"x:0": randn(4)})


@pytest.mark.parametrize("values", [
    randn(50, seed=1) * 3,
    np.array([0.0, 1.0, 2.5, -3.0, 1e-13, -0.0, 1e-12, 5e20, -1e30], np.float32),
    np.zeros(0, np.float32),
    np.full(7, 0.0, np.float32),
], ids=["normal", "edges", "empty", "zeros"])
def test_histogram_summary(values):
    def build(tf):
        x = ph(tf, "x", values)
        return [tf.compat.v1.summary.histogram("h", x), tf.compat.v1.summary.histogram("twice", x * 2)]

    check_bytes(build, {"x:0": values})


def test_histogram_of_integers_and_doubles():
    def build(tf):
        return [
            tf.compat.v1.summary.histogram("ints", tf.constant([[1, -5], [7, 0]], tf.int32)),
            tf.compat.v1.summary.histogram("doubles", tf.constant([1e-300, 2.0 / 3.0, -1e300], tf.float64)),
        ]

    check_bytes(build)


def test_histogram_with_nan_names_the_node():
    def build(tf):
        return tf.compat.v1.summary.histogram("bad", tf.compat.v1.placeholder(tf.float32, [2], name="x"))

    run = run_tf(build, {"x:0": np.ones(2, np.float32)})
    with jaxmeta.Session(run.graph) as sess, pytest.raises(jaxmeta.GraphError, match="'bad'.*NaN"):
        sess.run(run.fetch_names[0], {"x:0": np.array([1.0, np.nan], np.float32)})


def test_tensor_summaries():
    def build(tf):
        x = ph(tf, "x", randn(2, 3))
        return [
            tf.compat.v1.summary.tensor_summary("t", x),
            tf.compat.v1.summary.tensor_summary("ints", tf.constant([1, 2], tf.int64)),
            tf.compat.v1.summary.text("note", tf.constant(["hello", "world"])),
            tf.raw_ops.TensorSummary(tensor=x * 2),
        ]

    check_bytes(build, {"x:0": randn(2, 3)})


@pytest.mark.parametrize("shape,max_outputs", [((3, 40), 3), ((2, 30, 2), 1), ((4, 10, 1), 2)])
def test_audio_summary(shape, max_outputs):
    sounds = randn(*shape, seed=2) * 0.8  # some samples beyond [-1, 1]: clipped

    def build(tf):
        x = ph(tf, "x", sounds)
        return [tf.compat.v1.summary.audio("au", x, 8000.5, max_outputs=max_outputs),
                tf.compat.v1.summary.audio("rate", x, tf.reduce_sum(x) * 0 + 16000.0, max_outputs=max_outputs)]

    check_bytes(build, {"x:0": sounds})


def decode_png(tf, data: bytes) -> np.ndarray:
    # In a graph of its own: another test in this process may have turned eager execution off.
    g = tf.Graph()
    with g.as_default(), tf.compat.v1.Session(graph=g) as sess:
        return sess.run(tf.io.decode_png(tf.constant(data), channels=0))


IMAGE_CASES = {
    "signed": (randn(2, 5, 4, 3, seed=3), 3),
    "nonnegative": (np.abs(randn(5, 3, 6, 1, seed=4)) * 7, 3),
    "one": (randn(2, 4, 4, 4, seed=5), 1),
    "zeros": (np.zeros((1, 2, 3, 3), np.float32), 2),
    "nonfinite": (np.where(randn(2, 4, 5, 3, seed=6) > 1.2, np.nan, randn(2, 4, 5, 3, seed=7)), 2),
    "half": (randn(2, 3, 3, 3, seed=8, dtype=np.float16), 3),
    "double": (randn(1, 3, 2, 3, seed=9, dtype=np.float64), 3),
    "uint8": (np.random.default_rng(10).integers(0, 256, (3, 4, 2, 3)).astype(np.uint8), 4),
}


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_image_summary(name):
    images, max_images = IMAGE_CASES[name]
    tf = get_tf()

    def build(tf):
        x = ph(tf, "x", images)
        return tf.compat.v1.summary.image("img", x, max_outputs=max_images)

    feeds = {"x:0": images}
    run = run_tf(build, feeds)
    want = summary_pb2.Summary.FromString(run.expected[0])
    for got_bytes in jaxmeta_bytes(run, feeds):
        got = summary_pb2.Summary.FromString(got_bytes[0])
        assert [v.tag for v in got.value] == [v.tag for v in want.value]
        for g, w in zip(got.value, want.value):
            assert (g.image.height, g.image.width, g.image.colorspace) == (w.image.height, w.image.width, w.image.colorspace)
            got_pixels = decode_png(tf, g.image.encoded_image_string).astype(int)
            want_pixels = decode_png(tf, w.image.encoded_image_string).astype(int)
            # Double images arrive as float32 (JAX without x64): a level may round the other way.
            np.testing.assert_allclose(got_pixels, want_pixels, atol=1 if name == "double" else 0, err_msg=g.tag)


def test_merge_summary_matches_tf():
    def build(tf):
        x = ph(tf, "x", randn(6))
        a = tf.compat.v1.summary.scalar("a", tf.reduce_sum(x))
        h = tf.compat.v1.summary.histogram("h", x)
        t = tf.compat.v1.summary.text("t", tf.constant("note"))
        const = tf.constant([b"", summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag="c", simple_value=2.0)]).SerializeToString()])
        return [tf.compat.v1.summary.merge([a, h, t, const]), tf.compat.v1.summary.merge_all()]

    check_bytes(build, {"x:0": randn(6)})


def test_merge_summary_refuses_duplicate_tags():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = ph(tf, "x", randn(2))
        merged = tf.compat.v1.summary.merge([tf.raw_ops.ScalarSummary(tags="a", values=x[0]),
                                             tf.raw_ops.HistogramSummary(tag="a", values=x)])
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.InvalidArgumentError, match="Duplicate tag"):
            sess.run(merged, {x: randn(2)})
    graph = jaxmeta.import_meta_graph(meta)
    with pytest.raises(jaxmeta.GraphError, match="duplicate tag 'a'"):
        jax.jit(graph.function(merged.name, feeds=["x:0"]))({}, randn(2))


def test_summaries_of_a_training_step():
    """`sess.run([train_op, merged])`: the summary sees the values before the update, as in TF."""

    def build(tf):
        v1 = tf.compat.v1
        x = ph(tf, "x", randn(4, 3))
        w = v1.get_variable("w", [3, 2], initializer=v1.constant_initializer(0.5))
        loss = tf.reduce_mean(tf.square(tf.matmul(x, w)))
        v1.summary.scalar("loss", loss)
        v1.summary.histogram("w", w)
        train = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        return [v1.summary.merge_all(), train]

    tf = get_tf()
    feeds = {"x:0": randn(4, 3)}
    g = tf.Graph()
    with g.as_default():
        merged, train = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            want = [sess.run([merged, train], {g.get_tensor_by_name("x:0"): feeds["x:0"]})[0] for _ in range(3)]
    graph = jaxmeta.import_meta_graph(meta)
    variables = graph.init_variables()
    with jaxmeta.Session(graph, variables) as sess:
        got = [sess.run([merged.name, train.name], feeds)[0] for _ in range(3)]
    assert got == want
    step = jax.jit(graph.step([merged.name], feeds=["x:0"], targets=[train.name]), donate_argnums=0)
    (summary,), _ = step(graph.init_variables(), feeds["x:0"])
    assert bytes(summary) == want[0]
