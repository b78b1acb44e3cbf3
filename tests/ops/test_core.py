"""Core plumbing ops and the interpreter contract, against TensorFlow."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from oracle import assert_close, compare_with_tf, get_tf, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def test_identity_and_const():
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        c = tf.constant([[1.0, 2.0, 3.0]], name="c")
        return [tf.identity(x), tf.identity(c), tf.stop_gradient(x)]

    compare_with_tf(build, {"x:0": X}, grads=True)


def test_debug_identities():
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        return [tf.debugging.check_numerics(x, "x is bad"),
                tf.raw_ops.CheckNumericsV2(tensor=x * 2.0, message="bad")]

    compare_with_tf(build, {"x:0": X}, grads=True)

    def build_copies(tf):  # tfdbg's copies have no gradient in TF
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        i = tf.compat.v1.placeholder(tf.int32, [2], name="i")
        return [tf.raw_ops.Copy(input=x, tensor_name="x:0"), tf.raw_ops.CopyHost(input=x + 1.0),
                tf.raw_ops.Copy(input=i)]

    compare_with_tf(build_copies, {"x:0": X, "i:0": np.int32([3, -4])})


def test_debug_nan_count_and_identity_v3(tmp_path):
    """tfdbg's BaseDebugOp kernels: DebugNanCount (int64 [1], also for a scalar; integers have no
    NaN), DebugIdentityV3 and DebugIdentity (the input); with gated_grpc and no URL but gRPC ones
    (no debug server opens the gate) TF outputs an empty [0] tensor, a file:// URL keeps it open."""
    x = np.float32([[1, np.nan, np.inf], [np.nan, -np.inf, 0]])
    i = np.int32([3, -4])
    d = np.float64(np.nan)
    url = [(tmp_path / "dump").as_uri()]  # TF dumps there

    def build(tf):
        xp, ip, dp = (tf.compat.v1.placeholder(tf.as_dtype(v.dtype), v.shape, name=n) for n, v in
                      (("x", x), ("i", i), ("d", np.asarray(d))))
        ops = tf.raw_ops
        return [ops.DebugNanCount(input=xp, tensor_name="x:0"), ops.DebugNanCount(input=ip, tensor_name="i"),
                ops.DebugNanCount(input=dp, tensor_name=" d: +0 "), ops.DebugNanCount(input=xp * 0.0, tensor_name=":1"),
                ops.DebugIdentityV3(input=xp, tensor_name="x:0", io_of_node="mul", is_input=True, io_index=1),
                ops.DebugIdentityV3(input=ip, tensor_name="i:0", io_of_node="add", is_input=False, io_index=0),
                ops.DebugIdentity(input=xp + 1.0, tensor_name="add:0"),
                # gated off: empty outputs
                ops.DebugNanCount(input=xp, tensor_name="x:0", gated_grpc=True),
                ops.DebugIdentityV3(input=xp, tensor_name="x:0", gated_grpc=True),
                ops.DebugIdentity(input=ip, tensor_name="i:0", gated_grpc=True),
                # a file:// URL keeps the gate open (jaxmeta writes nothing there)
                ops.DebugNanCount(input=xp, tensor_name="x:0", gated_grpc=True, debug_urls=url)]

    compare_with_tf(build, {"x:0": x, "i:0": i, "d:0": d})


@pytest.mark.parametrize("tensor_name", ["", "x:a", "a:b:1", "x:", "x:99999999999"])
def test_debug_ops_reject_tensor_names_tf_rejects(tensor_name):
    tf = get_tf()
    for op in ("DebugNanCount", "DebugIdentityV3", "DebugIdentity"):
        g = tf.Graph()
        with g.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [2], name="x")
            y = getattr(tf.raw_ops, op)(input=x, tensor_name=tensor_name, name="watch")
            meta = tf.compat.v1.train.export_meta_graph(graph=g)
            with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.InvalidArgumentError):
                sess.run(y, {x: np.float32([1, 2])})
        with pytest.raises(jaxmeta.GraphError, match=rf"'watch' \({op}\): cannot parse tensor_name"):
            jaxmeta.import_meta_graph(meta).function([y.name], ["x:0"])({}, np.float32([1, 2]))


def test_debug_gradient_identities():
    """tfdbg's GradientsDebugger marks tensors with DebugGradientIdentity (DebugGradientRefIdentity
    for a ref variable, which stays a ref: an assign through it updates the variable); their TF
    gradient passes dy through (TF's gradient function needs the debugger's op names)."""
    from tensorflow.python.debug.lib import debug_gradients

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        debugger = debug_gradients.GradientsDebugger()
        y = debugger.identify_gradient(x * 2.0)
        assert y.op.type == "DebugGradientIdentity"
        return [y * y, tf.raw_ops.DebugGradientIdentity(input=tf.constant([1, 2]))]

    compare_with_tf(build, {"x:0": X}, grads=True)

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        v = tf.compat.v1.get_variable("v", initializer=np.float32([1.0, 2.0]), use_resource=False)
        watched = debug_gradients.GradientsDebugger().identify_gradient(v._ref())
        assert watched.op.type == "DebugGradientRefIdentity"
        update = tf.compat.v1.assign_add(watched, [10.0, 20.0], name="inc")
        with tf.control_dependencies([update]):
            out = tf.identity(v.value() * 2.0, name="out")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            want, want_v = sess.run(out), sess.run(v)
    np.testing.assert_allclose(want_v, [11.0, 22.0])
    step = jaxmeta.import_meta_graph(meta).step(out.name)
    for fn in (step, jax.jit(step)):
        got, new = fn({"v": np.float32([1.0, 2.0])})
        np.testing.assert_allclose(got, want)
        np.testing.assert_allclose(new["v"], want_v)


def test_to_bool():
    """ToBool (how TF's If and While read a non-bool predicate): a scalar is `!= 0` (NaN is true, -0.0
    false) or, for a string, non-empty; any other tensor is true when it has elements."""
    scalars = [np.float32(0), np.float32(-0.0), np.float32(np.nan), np.float32(0.5), np.float64(-2), np.int32(0),
               np.int32(7), np.int64(0), np.int64(-1), np.uint8(0), np.uint8(255), np.int8(-1), np.int16(0),
               np.bool_(False), np.bool_(True)]
    tensors = [np.zeros((0,), np.float32), np.zeros((2,), np.float32), np.zeros((1, 1), np.int32),
               np.zeros((0, 3), np.complex64), np.zeros((2,), np.uint32), np.zeros((1,), np.float16),
               np.zeros((3, 0), bool)]
    feeds = {f"v{k}:0": np.asarray(v) for k, v in enumerate(scalars + tensors)}

    def build(tf):
        outs = [tf.raw_ops.ToBool(input=tf.compat.v1.placeholder(tf.as_dtype(v.dtype), v.shape, name=n[:-2]))
                for n, v in feeds.items()]
        # strings: constants (a string cannot be fed under jit)
        return outs + [tf.raw_ops.ToBool(input=tf.constant(s)) for s in (b"", b"a", [b""], np.zeros((0,), object))]

    compare_with_tf(build, feeds)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "complex64", "uint16", "uint32", "uint64"])
def test_to_bool_rejects_scalars_tf_rejects(dtype):
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        y = tf.raw_ops.ToBool(input=tf.cast(tf.constant(1), getattr(tf, dtype)), name="pred")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.InvalidArgumentError):
            sess.run(y)
    with pytest.raises(jaxmeta.GraphError, match=rf"'pred' \(ToBool\): a {dtype} scalar cannot be converted"):
        jaxmeta.import_meta_graph(meta).function([y.name])({})


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


@pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
def test_init_variables_reads_initialized_values(resource):
    """TF1's `initialized_value()` (`cond(is_variable_initialized(v), read v, v.initial_value)`), as
    ExponentialMovingAverage's shadow variables, Adam's slots of a variable of unknown shape and
    variables initialized from others use it: `init_variables` runs it before the variable has a
    value, so the read sits in the branch known not taken, and the initializers give TF's values."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(1)
        v1 = tf.compat.v1.get_variable("v1", initializer=tf.constant([1.0, 2.0]), use_resource=resource)
        read = tf.cond(tf.compat.v1.is_variable_initialized(v1), lambda: tf.identity(v1), lambda: v1.initial_value)
        tf.compat.v1.get_variable("v2", initializer=read * 2, use_resource=resource)
        free = tf.compat.v1.get_variable("free", initializer=tf.zeros([3]), validate_shape=False, use_resource=resource)
        loss = tf.reduce_sum(v1 * v1) + tf.reduce_sum(free)
        tf.compat.v1.train.AdamOptimizer(0.1).minimize(loss)  # slots of the unknown-shape variable
        tf.train.ExponentialMovingAverage(0.9).apply([v1])
        maybe = tf.cond(tf.compat.v1.placeholder_with_default(True, []), lambda: tf.identity(v1), lambda: v1 * 0.0)
        names = [v.op.name for v in tf.compat.v1.global_variables()]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            want = dict(zip(names, sess.run(tf.compat.v1.global_variables())))
        meta = tf.compat.v1.train.export_meta_graph()
    got = jaxmeta.import_meta_graph(meta).init_variables()
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, err_msg=name)
    graph = jaxmeta.import_meta_graph(meta)
    np.testing.assert_allclose(graph.function(read.name)({}), [1.0, 2.0])
    with pytest.raises(jaxmeta.FeedError, match="'v1' has no value"):  # a branch that may be taken needs it
        graph.function(maybe.name)({})


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


# -- state ops: sliced and scattered assignments ---------------------------------------------------


def _assign_vs_tf(build, feeds=None):
    """Runs `build(tf) -> fetches` once in TF and as jaxmeta's `graph.step` (with and without jit);
    every op that assigns is a target. Compares the fetches and every variable afterwards."""
    tf = get_tf()
    feeds = dict(feeds or {})
    g = tf.Graph()
    with g.as_default():
        fetches = build(tf)
        targets = [op.name for op in g.get_operations() if "Assign" in op.type or "Scatter" in op.type]
        targets = [t for t in targets if not t.endswith("/Assign")]  # the variables' initializers
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        variables = tf.compat.v1.global_variables()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.variables_initializer(variables))
            start = {v.op.name: sess.run(v.read_value()) for v in variables}
            feed = {g.get_tensor_by_name(k): v for k, v in feeds.items()}
            want_out = sess.run([fetches, [g.get_operation_by_name(t) for t in targets]], feed)[0]
            want = {v.op.name: sess.run(v.read_value()) for v in variables}
    step = jaxmeta.import_meta_graph(meta).step([t.name for t in fetches], feeds=list(feeds), targets=targets)
    for jit in (False, True):
        got_out, got = (jax.jit(step) if jit else step)(start, *feeds.values())
        for t, g_val, w_val in zip(fetches, got_out, want_out):
            assert_close(g_val, w_val, rtol=0, atol=0, what=f"{t.name} (jit={jit})")
        for name, value in want.items():
            assert_close(got[name], value, rtol=0, atol=0, what=f"variable {name} (jit={jit})")


V345 = np.arange(60, dtype=np.float32).reshape(3, 4, 5)


@pytest.mark.parametrize("resource", [False, True])
def test_strided_slice_assign(resource):
    """TF1's `var[...].assign(value)`: StridedSliceAssign (ref variables) and
    ResourceStridedSliceAssign, each case on its own variable."""
    rng = np.random.default_rng(0)
    row, index = rng.standard_normal((4, 5)).astype(np.float32), np.int32(-2)

    def const(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def build(tf):
        def var(name, value=V345):
            return tf.compat.v1.get_variable(name, initializer=value, use_resource=resource)

        r = tf.compat.v1.placeholder(tf.float32, row.shape, name="row")
        i = tf.compat.v1.placeholder(tf.int32, [], name="i")
        outs = [
            var("basic")[0:2, 1:3].assign(const(2, 2, 5)),
            var("masks")[:, 2:].assign(const(3, 2, 5)),  # begin_mask, end_mask
            var("ellipsis")[..., 1].assign(const(3, 4)),  # ellipsis and shrink_axis
            var("new_axis")[tf.newaxis, 1].assign(const(1, 4, 5)),
            var("shrink")[1].assign(r),  # a fed value
            var("negative")[::-1, 3:0:-2].assign(const(3, 2, 5)),
            var("broadcast")[1:, :, ::2].assign(np.float32(7.0)),
            var("broadcast_row")[-1:, 1:3, -1:].assign(const(1, 1)),
            var("runtime_index")[i].assign(r),  # a begin known only at run time (shrunk: jit-able)
            var("empty")[2:1].assign(const(7)),  # an empty slice ignores the value's shape
            var("ints", V345.astype(np.int32))[1:, ::2, 3].assign(np.int32([[1, 2], [3, 4]])),
        ]
        v = var("raw")
        raw = tf.raw_ops.ResourceStridedSliceAssign if resource else tf.raw_ops.StridedSliceAssign
        outs.append(raw(ref=v.handle if resource else v, begin=[1, 0, 4], end=[3, 0, 0], strides=[1, 1, -2],
                        value=const(2, 4, 3), begin_mask=2, end_mask=6))
        # A ref op's output is the updated variable (fetched here); a resource op has none.
        return [] if resource else outs

    _assign_vs_tf(build, {"row:0": row, "i:0": index})


@pytest.mark.parametrize("resource", [False, True])
def test_scatter_nd_assign_and_resource_gather_nd(resource):
    rng = np.random.default_rng(1)
    indices = np.int32([[1, 0], [2, 3], [1, 0], [0, 3]])  # a repeated index: both updates apply
    updates = rng.standard_normal((4, 5)).astype(np.float32) * 30
    rows = np.int64([[2], [0]])

    def build(tf):
        i = tf.compat.v1.placeholder(tf.int32, indices.shape, name="i")
        u = tf.compat.v1.placeholder(tf.float32, updates.shape, name="u")
        for kind in ("Update", "Add", "Sub", "Max", "Min"):
            v = tf.compat.v1.get_variable(kind, initializer=V345, use_resource=resource)
            op = getattr(tf.raw_ops, f"ResourceScatterNd{kind}" if resource else f"ScatterNd{kind}")
            op(ref=v.handle if resource else v, indices=i, updates=u, name=f"scatter_{kind}")
        ints = tf.compat.v1.get_variable("ints", initializer=V345[0].astype(np.int32), use_resource=resource)
        op = tf.raw_ops.ResourceScatterNdMin if resource else tf.raw_ops.ScatterNdMin
        op(ref=ints.handle if resource else ints, indices=tf.constant([[1], [1], [3]]),
           updates=tf.constant([[9, -1, 9, 9, -2], [9, -3, 9, 9, 9], [-9, 9, 9, 9, 9]]))
        if not resource:
            return []
        table = tf.compat.v1.get_variable("table", initializer=V345, use_resource=True)
        gathered = [tf.gather_nd(table, i), tf.gather_nd(table, tf.constant(rows))]
        assert {t.op.inputs[0].op.type for t in gathered} == {"ResourceGatherNd"}  # TF adds an Identity
        return [*gathered,
                tf.raw_ops.ResourceGatherNd(resource=table.handle, indices=tf.zeros([2, 0], tf.int32),
                                            dtype=tf.float32)]

    _assign_vs_tf(build, {"i:0": indices, "u:0": updates})


def test_resource_gather_nd_gradient():
    # TF's gradient of a resource gather w.r.t. the variable is an IndexedSlices: compare dense.
    tf = get_tf()
    g = tf.Graph()
    indices = np.int32([[1, 2], [0, 0], [1, 2]])
    with g.as_default():
        table = tf.compat.v1.get_variable("table", initializer=V345, use_resource=True)
        y = tf.gather_nd(table, tf.constant(indices))
        w = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
        grad = tf.convert_to_tensor(tf.compat.v1.gradients(tf.reduce_sum(y * w), table)[0])
        assert y.op.inputs[0].op.type == "ResourceGatherNd"
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            want = sess.run(grad)
    f = jaxmeta.import_meta_graph(meta).function(y.name)
    got = jax.jit(jax.grad(lambda v: jax.numpy.sum(f(v) * w)))({"table": jax.numpy.asarray(V345)})
    np.testing.assert_allclose(got["table"], want)


def test_strided_slice_assign_bad_value_shape():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        v = tf.compat.v1.get_variable("v", initializer=V345, use_resource=False)
        value = tf.compat.v1.placeholder(tf.float32, None, name="value")
        tf.raw_ops.StridedSliceAssign(ref=v, begin=[0], end=[2], strides=[1], value=value, name="upd")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    step = jaxmeta.import_meta_graph(meta).step([], feeds=["value:0"], targets=["upd"])
    with pytest.raises(jaxmeta.GraphError, match="'upd'.*cannot broadcast"):
        step({"v": V345}, np.zeros((3, 5), np.float32))


def test_count_up_to():
    """CountUpTo (ref variables, TF1's count_up_to) and ResourceCountUpTo: the value, then the
    variable incremented, until it reaches the limit, where TF raises OutOfRangeError and jaxmeta
    a GraphError; under jit nothing is checked and the variable stays at the limit."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        ref = tf.compat.v1.get_variable("ref", initializer=np.int64(0), use_resource=False)
        res = tf.compat.v1.get_variable("res", initializer=np.int32(1), use_resource=True)
        counts = [tf.compat.v1.count_up_to(ref, 2),
                  tf.raw_ops.ResourceCountUpTo(resource=res.handle, limit=3, T=tf.int32)]
        assert [c.op.type for c in counts] == ["CountUpTo", "ResourceCountUpTo"]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            want = [sess.run(counts) for _ in range(2)]
            with pytest.raises(tf.errors.OutOfRangeError, match="Reached limit of [23]"):  # either op first
                sess.run(counts)
    graph = jaxmeta.import_meta_graph(meta)
    step = graph.step([c.name for c in counts])
    for fn in (step, jax.jit(step)):
        variables = graph.init_variables()
        for w in want:
            got, variables = fn(variables)
            assert [int(v) for v in got] == [int(v) for v in w]
        if fn is step:
            with pytest.raises(jaxmeta.GraphError, match=r"CountUpTo'.*Reached limit of [23]"):
                fn(variables)
        else:
            got, variables = fn(variables)
            assert [int(v) for v in got] == [2, 3]
            assert (int(variables["ref"]), int(variables["res"])) == (2, 3)


def test_session_compiler_options():
    """`Session(compiler_options=)` reaches XLA's compile of each signature."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "graphs")
    graph = jaxmeta.import_meta_graph(os.path.join(folder, "summaries.meta"))
    variables = graph.saver.restore(os.path.join(folder, "summaries.ckpt"))
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], np.float32)
    want = jaxmeta.Session(graph, variables).run("loss:0", {"x:0": x})
    option = {"xla_cpu_prefer_vector_width": 256} if jax.default_backend() == "cpu" else {
        "xla_gpu_enable_triton_gemm": False}
    np.testing.assert_array_equal(jaxmeta.Session(graph, variables, compiler_options=option).run("loss:0", {"x:0": x}),
                                  want)
    with pytest.raises(jax.errors.JaxRuntimeError, match="no_such_xla_option"):
        jaxmeta.Session(graph, variables, compiler_options={"no_such_xla_option": 1}).run("loss:0", {"x:0": x})


# -- Assert, CheckNumerics, EnsureShape: TF's checks where the values are known -------------------


def test_assert_raises_where_known():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [3], name="x")
        check = tf.debugging.Assert(tf.reduce_all(x > 0), ["x must be positive:", x], summarize=2)
        with tf.control_dependencies([check]):
            tf.identity(x * 2, name="y")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function(["y:0"], ["x:0"])
    np.testing.assert_array_equal(f({}, np.float32([1, 2, 3]))[0], [2, 4, 6])
    with pytest.raises(jaxmeta.GraphError, match=r"'Assert/AssertGuard/Assert' \(Assert\): assertion failed: "
                                                 r"\[x must be positive:\] \[1.0 -2.0...\]"):
        f({}, np.float32([1, -2, 3]))
    with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.InvalidArgumentError):
        sess.run("y:0", {"x:0": np.float32([1, -2, 3])})
    np.testing.assert_array_equal(jax.jit(f)({}, np.float32([1, -2, 3]))[0], [2, -4, 6])  # not checked


def test_check_numerics_and_ensure_shape():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        tf.debugging.check_numerics(tf.math.log(x), "log of x", name="checked")
        tf.ensure_shape(x, [2], name="shaped")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    f = graph.function(["checked:0"], ["x:0"])
    np.testing.assert_allclose(f({}, np.float32([1, np.e]))[0], [0, 1], rtol=1e-6)
    with pytest.raises(jaxmeta.GraphError, match=r"'checked' \(CheckNumerics\): log of x : Tensor had NaN values"):
        f({}, np.float32([1, -1]))
    with pytest.raises(jaxmeta.GraphError, match=r"'checked' .*Tensor had Inf values"):
        f({}, np.float32([1, 0]))
    shaped = graph.function(["shaped:0"], ["x:0"])
    np.testing.assert_array_equal(jax.jit(shaped)({}, np.float32([1, 2]))[0], [1, 2])
    with pytest.raises(jaxmeta.GraphError, match=r"'shaped' \(EnsureShape\): shape of tensor \(3,\) is not "
                                                 r"compatible with expected shape \[2\]"):
        jax.jit(shaped)({}, np.float32([1, 2, 3]))
