"""Core plumbing ops and the interpreter contract, against TensorFlow."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import compare_with_tf, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def test_identity_and_const():
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        c = tf.constant([[1.0, 2.0, 3.0]], name="c")
        return [tf.identity(x), tf.identity(c), tf.stop_gradient(x)]

    compare_with_tf(build, {"x:0": X}, grads=True)


def test_placeholder_with_default_and_feeding_any_tensor():
    def build(tf):
        x = tf.compat.v1.placeholder_with_default(tf.constant(X), [2, 3], name="x")
        y = tf.identity(x * 2.0, name="y")
        return tf.identity(y + 1.0, name="z")

    run = run_tf(build)
    g = run.graph
    np.testing.assert_allclose(g.function("z:0")({}), X * 2 + 1)
    # Feeding an intermediate tensor cuts the graph there.
    np.testing.assert_allclose(g.function("z:0", feeds=["y:0"])({}, np.ones((2, 3), np.float32)), 2.0)


def test_variables_and_assign_step():
    def build(tf):
        v = tf.compat.v1.get_variable("v", initializer=np.float32([1.0, 2.0]), use_resource=False)
        r = tf.compat.v1.get_variable("r", initializer=np.float32([3.0]), use_resource=True)
        tf.compat.v1.assign_add(v, [1.0, 1.0], name="inc_v")
        r.assign_add([2.0], name="inc_r")
        return [v.value(), r.read_value()]

    run = run_tf(build)
    g = run.graph
    variables = {k: jax.numpy.asarray(v) for k, v in run.variables.items()}
    f = g.step(["v:0", "r/Read/ReadVariableOp:0"], targets=["inc_v", "inc_r"])
    for fn in (f, jax.jit(f)):
        _, new = fn(variables)
        np.testing.assert_allclose(new["v"], [2.0, 3.0])
        np.testing.assert_allclose(new["r"], [5.0])
    with pytest.raises(jaxmeta.GraphError, match="graph.step"):
        g.function("inc_v")
    init = g.init_variables()
    np.testing.assert_allclose(init["v"], [1.0, 2.0])


def test_ref_read_ordered_after_an_update_sees_it():
    """`v/read` is made with the variable; an op ordered after an update reads through it. TF1's
    Identity aliases a ref variable's buffer, which AssignAdd updates in place, so whenever the
    read runs, the op sees the new value. (Unordered reads are a race in TF; jaxmeta gives them
    the old value.)"""
    from oracle import get_tf

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        v = tf.compat.v1.get_variable("v", initializer=np.float32([1.0, 2.0]), use_resource=False)
        early = tf.identity(v.value(), name="early")  # Identity(v/read), created before the update
        update = tf.compat.v1.assign_add(v, [10.0, 10.0], name="inc")
        with tf.control_dependencies([update]):
            after = tf.identity(early * 2.0, name="after")
        meta = tf.compat.v1.train.export_meta_graph()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            start = {"v": sess.run(v.value())}
            want = sess.run(after)
    np.testing.assert_allclose(want, [22.0, 24.0])
    f = jaxmeta.import_meta_graph(meta).step("after:0")
    for fn in (f, jax.jit(f)):
        got, new = fn(start)
        np.testing.assert_allclose(got, want)
        np.testing.assert_allclose(new["v"], [11.0, 12.0])


def test_missing_feed_and_unknown_names():
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        return tf.identity(x, name="y")

    g = run_tf(build, {"x:0": np.float32([1, 2])}).graph
    with pytest.raises(jaxmeta.FeedError, match="x:0"):
        g.function("y:0")
    with pytest.raises(jaxmeta.GraphError, match="no operation"):
        g.function("nope:0")


def test_session_run_structures():
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
        v = tf.compat.v1.get_variable("v", initializer=np.float32([1.0, 2.0]), use_resource=False)
        tf.compat.v1.assign_add(v, x, name="inc")
        return tf.identity(v * 1.0, name="y")

    run = run_tf(build, {"x:0": np.float32([1, 1])})
    sess = jaxmeta.Session(run.graph, run.variables)
    out = sess.run({"a": "y:0", "b": ["y:0", "inc"]}, feed_dict={"x:0": np.float32([1, 1])})
    # The read of v is unordered with the increment: like a TF step, it sees the old value.
    np.testing.assert_allclose(out["a"], [1.0, 2.0])
    assert out["b"][1] is None
    np.testing.assert_allclose(sess.run("y:0"), [2.0, 3.0])
