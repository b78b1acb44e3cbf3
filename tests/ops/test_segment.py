"""Segment, sparse-segment, stitch/partition, unique, top-k and sparse ops against TensorFlow."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import compare_with_tf, get_tf, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle

RNG = np.random.default_rng(0)
DATA = RNG.standard_normal((6, 3)).astype(np.float32)
DATA3 = RNG.standard_normal((2, 3, 2)).astype(np.float32)
INTS = RNG.integers(-5, 6, (6, 3)).astype(np.int32)


def _ph(tf, value, name):
    return tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape, name=name)


# -- segment reductions ----------------------------------------------------------------------------

SORTED_IDS = [np.int32([0, 0, 1, 1, 3, 3]), np.int64([0, 1, 1, 2, 2, 2]), np.int32([2, 2, 2, 4, 4, 5])]


SEGMENT_OPS = ["segment_sum", "segment_mean", "segment_max", "segment_min", "segment_prod"]


@pytest.mark.parametrize("ids", SORTED_IDS, ids=lambda v: str(v.tolist()))
def test_sorted_segment(ids):
    def build(tf):
        x = _ph(tf, DATA, "x")
        return [getattr(tf.math, op)(x, tf.constant(ids)) for op in SEGMENT_OPS]

    compare_with_tf(build, {"x:0": DATA}, grads=True)


def test_sorted_segment_ties():
    def build(tf):
        x = _ph(tf, TIES, "x")
        return [getattr(tf.math, op)(x, tf.constant([0, 0, 1, 1, 1, 3])) for op in SEGMENT_OPS]

    compare_with_tf(build, {"x:0": TIES}, grads=True)


def test_sorted_segment_int_and_1d():
    def build(tf):
        x = _ph(tf, INTS, "x")
        v = _ph(tf, DATA[:, 0], "v")
        return [f(a, tf.constant(i)) for f in (getattr(tf.math, op) for op in SEGMENT_OPS)
                for a, i in ((x, SORTED_IDS[0]), (v, SORTED_IDS[2]))]

    compare_with_tf(build, {"x:0": INTS, "v:0": DATA[:, 0]}, grads=True)


def test_sorted_segment_traced_ids():
    def build(tf):
        x = _ph(tf, DATA, "x")
        ids = tf.compat.v1.placeholder(tf.int32, [6], name="ids")
        return tf.math.segment_sum(x, ids)

    # Concrete ids (no jit) give TF's result; under jit the output size is unknowable: a clear error.
    feeds = {"x:0": DATA, "ids:0": SORTED_IDS[0]}
    run = compare_with_tf(build, feeds, jit_modes=(False,))
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    with pytest.raises(jaxmeta.GraphError, match="values of segment_ids, which are only known at run time"):
        jax.jit(f)({}, *feeds.values())


TIES = np.float32([[1, 2], [1, 0], [3, 2], [3, 5], [0, 0], [-1, -1]])

UNSORTED = [
    (DATA, np.int32([3, -1, 0, 3, 1, 0]), 5),
    (TIES, np.int32([0, 0, 1, 1, 2, 2]), 3),  # max/min ties share the gradient evenly, as in TF
    (DATA, np.int64([4, 4, 4, 4, 4, 4]), 6),
    (DATA3, np.int32([[1, 0, 1], [-1, 2, 2]]), 4),
    (INTS, np.int32([0, 2, 2, 0, 1, 1]), 4),
]


UNSORTED_OPS = ["unsorted_segment_sum", "unsorted_segment_max", "unsorted_segment_min", "unsorted_segment_prod",
                "unsorted_segment_mean", "unsorted_segment_sqrt_n"]


@pytest.mark.parametrize("data,ids,num,fed_ids", [(*c, False) for c in UNSORTED] + [(*UNSORTED[2], True)],
                         ids=["2d", "ties", "one-segment", "3d-prefix", "int", "fed-ids"])
def test_unsorted_segment(data, ids, num, fed_ids):
    # TF defines mean and sqrt_n for floats only.
    ops = UNSORTED_OPS[:4] if data.dtype.kind == "i" else UNSORTED_OPS

    def build(tf):
        x = _ph(tf, data, "x")
        i = _ph(tf, ids, "ids") if fed_ids else tf.constant(ids)
        return [getattr(tf.math, op)(x, i, num) for op in ops]

    feeds = {"x:0": data, **({"ids:0": ids} if fed_ids else {})}
    compare_with_tf(build, feeds, grads=True)


def test_unsorted_segment_extremes_of_bfloat16():
    # Empty segments hold the dtype's lowest (highest) value: bfloat16's came from np.finfo, which
    # does not know it.
    import ml_dtypes

    data = np.array([1.5, -2.0, 3.0, 0.25], ml_dtypes.bfloat16)

    def build(tf):
        x = _ph(tf, data, "x")
        return [tf.math.unsorted_segment_max(x, [0, 2, 0, 1], 4), tf.math.unsorted_segment_min(x, [0, 2, 0, 1], 4)]

    compare_with_tf(build, {"x:0": data})


@pytest.mark.parametrize("kind, dtype", [  # int64: jax narrows it; SqrtN is for floats
    (kind, dtype) for kind in ["sum", "mean", "sqrtn", "prod", "max", "min"]
    for dtype in [np.float32, np.int32, np.uint8, np.float16] if kind != "sqrtn" or np.dtype(dtype).kind == "f"])
def test_segment_reduce_in_numpy_matches_jax(kind, dtype):
    """Op by op on host values (a host stage), the reductions run in NumPy: the same values as
    jax.numpy's, with ids out of range dropped, empty segments, and integer means truncated."""
    from jaxmeta.ops import segment

    data = RNG.integers(-9, 10, (8, 3)).astype(dtype) if np.dtype(dtype).kind != "u" else RNG.integers(0, 9, (8, 3)).astype(dtype)
    ids = np.int32([0, 0, 1, 4, 4, 4, -1, 6])  # segments 2, 3 and 5 empty; -1 and 6 dropped
    for empty in (None, 7):
        got = segment._segment_numpy(kind, data, ids, 6, empty)
        want = np.asarray(jax.jit(lambda d, empty=empty: segment._segment_reduce(
            kind, d, jnp.asarray(ids), 6, sorted_ids=False, empty=empty))(data))
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-3 if dtype == np.float16
                                   else 1e-6, err_msg=f"{kind} {empty}")


def test_segment_v2():
    # TF has no CPU kernel for the V2 ops: build the graph only, compare with the documented results.
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = _ph(tf, DATA, "x")
        outs = [getattr(tf.raw_ops, op)(data=x, segment_ids=tf.constant(SORTED_IDS[0]), num_segments=5)
                for op in ["SegmentSumV2", "SegmentMaxV2", "SegmentMinV2", "SegmentProdV2"]]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([o.name for o in outs], feeds=["x:0"])
    got = jax.jit(f)({}, DATA)
    ids = SORTED_IDS[0]
    lowest, highest = np.finfo(np.float32).min, np.finfo(np.float32).max
    for out, reduce, empty in zip(got, [np.sum, np.max, np.min, np.prod], [0.0, lowest, highest, 1.0]):
        want = np.stack([reduce(DATA[ids == s], axis=0) if (ids == s).any() else np.full(3, empty, np.float32)
                         for s in range(5)])
        np.testing.assert_allclose(out, want, rtol=1e-6)


# -- sparse segments -------------------------------------------------------------------------------

SPARSE = [
    (np.int32([0, 2, 4, 1]), np.int32([0, 0, 1, 3])),
    (np.int64([5, 5, 0, 3, 3, 1]), np.int64([0, 1, 1, 1, 2, 4])),
]


@pytest.mark.parametrize("indices,segments", SPARSE, ids=["a", "b"])
@pytest.mark.parametrize("num_segments", [None, 7])
def test_sparse_segment(indices, segments, num_segments):
    def build(tf, tf_grad=False):
        x = _ph(tf, DATA, "x")
        ys = [getattr(tf.compat.v1, op)(x, tf.constant(indices), tf.constant(segments), num_segments=num_segments)
              for op in ["sparse_segment_sum", "sparse_segment_mean", "sparse_segment_sqrt_n"]]
        if tf_grad:  # TF's own gradient graphs (SparseSegment*Grad), which TF cannot differentiate again
            return [tf.convert_to_tensor(tf.compat.v1.gradients(tf.reduce_sum(y * y), x)[0]) for y in ys]
        return ys

    compare_with_tf(build, {"x:0": DATA}, grads=True)
    compare_with_tf(lambda tf: build(tf, tf_grad=True), {"x:0": DATA})


def test_sparse_segment_grad_ops():
    grad = RNG.standard_normal((4, 3)).astype(np.float32)

    def build(tf):
        g = _ph(tf, grad, "g")
        return [getattr(tf.raw_ops, op)(grad=g, indices=tf.constant([0, 2, 4, 1, 2]),
                                        segment_ids=tf.constant([0, 0, 1, 3, 3]), output_dim0=6)
                for op in ["SparseSegmentSumGrad", "SparseSegmentMeanGrad", "SparseSegmentSqrtNGrad"]]

    compare_with_tf(build, {"g:0": grad})


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_sparse_segment_grad_v2_ops(dtype):
    """The sparse gradients (`sparse_gradient=True`): rows at the sorted unique indices only."""
    grad = RNG.standard_normal((4, 3)).astype(np.float32)

    def build(tf):
        g = _ph(tf, grad, "g")
        outs = [getattr(tf.raw_ops, op)(grad=g, indices=tf.constant([4, 2, 0, 1, 2], dtype),
                                        segment_ids=tf.constant([0, 0, 1, 3, 3]), dense_output_dim0=6)
                for op in ["SparseSegmentSumGradV2", "SparseSegmentMeanGradV2", "SparseSegmentSqrtNGradV2"]]
        return [t for out in outs for t in out]

    compare_with_tf(build, {"g:0": grad})


def test_sparse_segment_grad_v2_checks_indices():
    node = type("N", (), {"name": "g", "type": "SparseSegmentSumGradV2"})()
    fn = jaxmeta.ops.registry.lookup("SparseSegmentSumGradV2").build(node)
    with pytest.raises(jaxmeta.GraphError, match=r"indices\[1\] = 3 is not in \[0, 3\)"):
        fn(np.ones((2, 2), np.float32), np.int32([0, 3]), np.int32([0, 1]), np.int32(3))


# -- stitch and partition --------------------------------------------------------------------------


@pytest.mark.parametrize("duplicates", [False, True])
def test_dynamic_stitch(duplicates):
    a, b = DATA[:2], DATA[2:5]

    def build(tf):
        x, y = _ph(tf, a, "a"), _ph(tf, b, "b")
        last = 4 if duplicates else 2  # a repeated index: the later write wins
        stitched = tf.dynamic_stitch([tf.constant([0, 4]), tf.constant([1, 3, last])], [x, y])
        parallel = tf.raw_ops.ParallelDynamicStitch(indices=[tf.constant([5, 0]), tf.constant([1, 3, last])],
                                                    data=[x, y])
        nested = tf.dynamic_stitch([tf.constant([0, 4]), tf.constant([[1], [5]])], [x, tf.reshape(y[:2], [2, 1, 3])])
        return [stitched, parallel, nested]

    # With duplicates TF's registered gradient also credits overwritten entries; jax.grad does not.
    compare_with_tf(build, {"a:0": a, "b:0": b}, grads=not duplicates)


def test_dynamic_stitch_in_gradient_shape_arithmetic():
    def build(tf):
        x = _ph(tf, DATA3, "x")
        y = tf.reduce_sum(x * x, axis=[0, 2])  # its gradient reshapes with a DynamicStitch'ed shape
        return [y, tf.compat.v1.gradients(y, x)[0]]

    compare_with_tf(build, {"x:0": DATA3}, grads=True)


@pytest.mark.parametrize("parts,num", [(np.int32([0, 1, 0, 2, 2, 0]), 3), (np.int32([1, 1, 1, 1, 1, 1]), 3)])
def test_dynamic_partition(parts, num):
    def build(tf):
        x = _ph(tf, DATA, "x")
        outs = tf.dynamic_partition(x, tf.constant(parts), num)
        return [*outs, tf.dynamic_partition(tf.constant(np.arange(6)), tf.constant(parts), num)[0]]

    compare_with_tf(build, {"x:0": DATA}, grads=True)


def test_dynamic_partition_traced_partitions():
    parts = np.int32([[0, 1, 0], [1, 1, 0]])

    def build(tf):
        x = _ph(tf, DATA3, "x")
        p = _ph(tf, parts, "p")
        return tf.dynamic_partition(x, p, 2)

    feeds = {"x:0": DATA3, "p:0": parts}
    run = compare_with_tf(build, feeds, grads=True, jit_modes=(False,))
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    with pytest.raises(jaxmeta.GraphError, match="values of partitions, which are only known at run time"):
        jax.jit(f)({}, *feeds.values())


# -- unique ------------------------------------------------------------------------------------------

UNIQUE_INPUTS = [np.int32([4, 1, 4, 7, 1, 1, 9]), np.int64([3]), np.float32([2.5, -1.0, 2.5, 0.0])]


@pytest.mark.parametrize("x", UNIQUE_INPUTS, ids=lambda v: str(v.tolist()))
def test_unique_static_is_exact(x):
    def build(tf):
        c = tf.constant(x)
        y, idx = tf.unique(c)
        y2, idx2, count = tf.unique_with_counts(c, out_idx=tf.int64)
        return [y, idx, y2, idx2, count]

    compare_with_tf(build)


@pytest.mark.parametrize("x", UNIQUE_INPUTS, ids=lambda v: str(v.tolist()))
def test_unique_traced_is_padded(x):
    def build(tf):
        p = _ph(tf, x, "x")
        return [*tf.unique(p), *tf.unique_with_counts(p)]

    run = run_tf(build, {"x:0": x})
    want_y, want_idx = run.expected[0], run.expected[1]
    k = want_y.shape[0]
    f = run.graph.function(run.fetch_names, feeds=["x:0"])
    for got, want in zip(f({}, x), run.expected):  # without jit the input is known: TF's exactly
        np.testing.assert_array_equal(got, want)
    y, idx, y2, idx2, count = (np.asarray(v) for v in jax.jit(f)({}, x))
    assert y.shape == x.shape and count.shape == x.shape
    np.testing.assert_array_equal(y[:k], want_y)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(y2[:k], want_y)
    np.testing.assert_array_equal(idx2, want_idx)
    np.testing.assert_array_equal(count[:k], run.expected[4])
    np.testing.assert_array_equal(count[k:], 0)
    if x.dtype.kind == "i":
        assert len(set(y.tolist())) == y.size and (y[k:] > 1_000_000).all()
    else:
        assert np.isnan(y[k:]).all()


def test_unique_v2_axis():
    x = np.int32([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]])

    def build(tf):
        c = tf.constant(x)
        return [*tf.raw_ops.UniqueV2(x=c, axis=tf.constant([0], tf.int64)),
                *tf.raw_ops.UniqueV2(x=tf.constant(x.T), axis=tf.constant([1])),
                *tf.raw_ops.UniqueWithCountsV2(x=c, axis=tf.constant([0]))]

    compare_with_tf(build)
    run = run_tf(lambda tf: tf.raw_ops.UniqueV2(x=_ph(tf, x, "x"), axis=tf.constant([0])), {"x:0": x})
    y, idx = jax.jit(run.graph.function(run.fetch_names, feeds=["x:0"]))({}, x)
    np.testing.assert_array_equal(np.asarray(y)[:3], run.expected[0])
    np.testing.assert_array_equal(idx, run.expected[1])


def _train_step_vs_tf(build, feeds, steps=2):
    """Runs `build(tf) -> train_op` for a few steps in TF and in jaxmeta (jit); compares variables."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(0)
        train_op = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        variables = tf.compat.v1.global_variables()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.variables_initializer(variables))
            init = {v.op.name: sess.run(v) for v in variables}
            feed = {g.get_tensor_by_name(k): v for k, v in feeds.items()}
            for _ in range(steps):
                sess.run(train_op, feed)
            want = {v.op.name: sess.run(v) for v in variables}
    graph = jaxmeta.import_meta_graph(meta)
    step = jax.jit(graph.step(targets=[train_op.name], feeds=list(feeds)))
    state = {k: jnp.asarray(v) for k, v in init.items()}
    for _ in range(steps):
        _, state = step(state, *feeds.values())
    for name, value in want.items():
        np.testing.assert_allclose(state[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_unique_segment_sum_scatter_add_matches_tf():
    ids = np.int32([3, 1, 3, 0, 1, 3])
    upd = RNG.standard_normal((6, 2)).astype(np.float32)

    def build(tf):
        var = tf.compat.v1.get_variable("table", initializer=np.arange(10, dtype=np.float32).reshape(5, 2),
                                        use_resource=False)
        i, u = _ph(tf, ids, "ids"), _ph(tf, upd, "upd")
        unique_ids, idx = tf.unique(i)
        summed = tf.math.unsorted_segment_sum(u, idx, tf.shape(unique_ids)[0])
        return tf.compat.v1.scatter_add(var, unique_ids, summed).op

    _train_step_vs_tf(build, {"ids:0": ids, "upd:0": upd})


@pytest.mark.parametrize("optimizer", ["Adagrad", "Momentum", "Adam", "RMSProp", "GradientDescent"])
@pytest.mark.parametrize("resource", [False, True])
def test_embedding_training_with_duplicate_ids(optimizer, resource):
    ids = np.int32([[2, 0], [2, 5], [0, 2]])

    def build(tf):
        table = tf.compat.v1.get_variable("emb", initializer=RNG.standard_normal((6, 3)).astype(np.float32),
                                          use_resource=resource)
        i = _ph(tf, ids, "ids")
        loss = tf.reduce_sum(tf.square(tf.nn.embedding_lookup(table, i)) * tf.constant([1.0, 2.0, 3.0]))
        opt = {
            "Adagrad": lambda: tf.compat.v1.train.AdagradOptimizer(0.1),
            "Momentum": lambda: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9),
            "Adam": lambda: tf.compat.v1.train.AdamOptimizer(0.1),
            "RMSProp": lambda: tf.compat.v1.train.RMSPropOptimizer(0.1),
            "GradientDescent": lambda: tf.compat.v1.train.GradientDescentOptimizer(0.1),
        }[optimizer]()
        return opt.minimize(loss)

    _train_step_vs_tf(build, {"ids:0": ids}, steps=3)


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_embedding_lookup_sparse_with_fed_ids(combiner):
    # The SparseTensor's indices are constant and its ids fed: Unique runs on traced ids (padded
    # output) and the combiner's segments are static, so the whole lookup is jit-able.
    params = RNG.standard_normal((8, 3)).astype(np.float32)
    ids = np.int64([5, 1, 5, 7, 1, 0])
    weights = np.float32([0.5, 1.0, 2.0, 1.0, 1.5, 1.0])

    def build(tf):
        p = _ph(tf, params, "params") * 1.0  # a dense gradient for the oracle
        sp = tf.sparse.SparseTensor([[0, 0], [0, 1], [1, 0], [2, 0], [2, 1], [2, 3]], _ph(tf, ids, "ids"), [4, 4])
        w = tf.sparse.SparseTensor(sp.indices, _ph(tf, weights, "w"), sp.dense_shape)
        return [tf.compat.v1.nn.embedding_lookup_sparse(p, sp, None, combiner=combiner),
                tf.compat.v1.nn.embedding_lookup_sparse(p, sp, w, combiner=combiner)]

    compare_with_tf(build, {"params:0": params, "ids:0": ids, "w:0": weights}, grads=True)


# -- embedding lookup over a partitioned variable --------------------------------------------------


def _partitioned_lookup(strategy, ids_value, fed):
    def build(tf):
        params = tf.compat.v1.get_variable(
            "emb", [7, 2], initializer=tf.compat.v1.random_normal_initializer(),
            partitioner=tf.compat.v1.fixed_size_partitioner(3), use_resource=False)
        ids = _ph(tf, ids_value, "ids") if fed else tf.constant(ids_value)
        out = tf.compat.v1.nn.embedding_lookup(params, ids, partition_strategy=strategy)
        return [out, tf.reduce_sum(out * out)]

    return build


@pytest.mark.parametrize("strategy", ["mod", "div"])
def test_partitioned_embedding_lookup_constant_ids(strategy):
    ids = np.int32([[6, 0, 3], [3, 1, 5]])
    compare_with_tf(_partitioned_lookup(strategy, ids, fed=False))


@pytest.mark.parametrize("strategy", ["mod", "div"])
def test_partitioned_embedding_lookup_fed_ids(strategy):
    ids = np.int64([[6, 0, 3], [3, 1, 5]])
    # Fed ids make DynamicPartition's sizes data dependent; partition -> gather -> stitch is
    # lowered to masked partitions, so the lookup matches TF with and without jit.
    run = compare_with_tf(_partitioned_lookup(strategy, ids, fed=True), {"ids:0": ids})
    f = run.graph.function(run.fetch_names, feeds=["ids:0"])
    variables = {k: jnp.asarray(v) for k, v in run.variables.items()}
    # Gradients w.r.t. the partitions, eager and jitted: exactly the looked-up rows.
    parts = sorted(run.variables)  # emb/part_0 .. part_2 with 3, 2, 2 rows
    want = {k: np.zeros_like(run.variables[k]) for k in parts}
    offsets = [0, 3, 5]
    for i in ids.reshape(-1):
        p, r = (i % 3, i // 3) if strategy == "mod" else (np.searchsorted(offsets, i, "right") - 1, 0)
        r = r if strategy == "mod" else i - offsets[p]
        want[parts[p]][r] += 2 * run.variables[parts[p]][r]
    for grad_fn in (jax.grad(lambda v: f(v, ids)[1]), jax.jit(jax.grad(lambda v: f(v, ids)[1]))):
        grads = grad_fn(variables)
        for k in parts:
            np.testing.assert_allclose(grads[k], want[k], rtol=1e-6, err_msg=k)


def test_partitioned_lookup_in_a_training_graph():
    """A .meta saved from training also holds TF's gradient ops on the partitions: the forward
    function (pruned to the lookup) still jits; the train_op, which reads the partitions through
    the sparse gradients, runs without jit and equals TF's step."""
    tf = get_tf()
    ids = np.int32([[6, 0, 3], [3, 1, 5]])
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(1)
        params = tf.compat.v1.get_variable(
            "emb", [7, 2], partitioner=tf.compat.v1.fixed_size_partitioner(3), use_resource=False)
        x = tf.compat.v1.placeholder(tf.int32, [2, 3], name="ids")
        out = tf.identity(tf.compat.v1.nn.embedding_lookup(params, x), name="out")
        loss = tf.reduce_sum(out * out)
        train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        variables = tf.compat.v1.global_variables()
        meta = tf.compat.v1.train.export_meta_graph()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.variables_initializer(variables))
            before = {v.op.name: sess.run(v) for v in variables}
            want_out = sess.run(out, {x: ids})
            sess.run(train_op, {x: ids})
            after = {v.op.name: sess.run(v) for v in variables}
    graph = jaxmeta.import_meta_graph(meta)
    got = jax.jit(graph.function("out:0", feeds=["ids:0"]))(before, ids)
    np.testing.assert_allclose(got, want_out, rtol=1e-6)
    step = graph.step([], feeds=["ids:0"], targets=[train_op.name])
    with pytest.raises(jaxmeta.GraphError, match="values of partitions, which are only known at run time"):
        jax.jit(step)(before, ids)
    _, new = step(before, ids)
    for name, value in after.items():
        np.testing.assert_allclose(new[name], value, rtol=1e-6, err_msg=name)


def test_partition_stitch_round_trip_with_fed_partitions():
    parts = np.int32([2, 0, 1, 0, 2, 2])

    def build(tf):
        x, p = _ph(tf, DATA, "x"), _ph(tf, parts, "p")
        positions = tf.dynamic_partition(tf.range(6), p, 3)
        values = tf.dynamic_partition(x * 2.0, p, 3)
        return tf.dynamic_stitch(positions, [tf.identity(v) for v in values])

    compare_with_tf(build, {"x:0": DATA, "p:0": parts}, grads=True)


def test_partition_stitch_with_fed_partitions_refuses_other_positions():
    parts = np.int32([1, 0, 1])

    def build(tf):
        x, p = _ph(tf, DATA[:3], "x"), _ph(tf, parts, "p")
        positions = tf.dynamic_partition(tf.constant([4, 0, 2]), p, 2)  # not 0..n-1: TF gives 5 rows
        return tf.dynamic_stitch(positions, tf.dynamic_partition(x, p, 2))

    feeds = {"x:0": DATA[:3], "p:0": parts}
    run = compare_with_tf(build, feeds, jit_modes=(False,))
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    with pytest.raises(jaxmeta.GraphError, match="positions 0..n-1"):
        jax.jit(f)({}, *feeds.values())


# -- top-k -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,k", [((7,), 3), ((2, 5), 5), ((2, 3, 4), 1), ((3, 4), 0)])
@pytest.mark.parametrize("sorted_", [True, False])
def test_top_k(shape, k, sorted_):
    x = RNG.permutation(np.prod(shape)).reshape(shape).astype(np.float32)

    def build(tf):
        p = _ph(tf, x, "x")
        values, indices = tf.math.top_k(p, k, sorted=sorted_)
        # sorted=False leaves TF's order unspecified (its CPU kernel does not sort): compare as sets.
        return [values, indices] if sorted_ else [tf.sort(values, direction="DESCENDING")]

    compare_with_tf(build, {"x:0": x}, grads=k > 0)  # TF's gradient of sorting an empty k fails


def test_top_k_ties_and_ints():
    x = np.int32([[3, 1, 3, 2, 3], [0, 0, 0, 0, 0]])
    compare_with_tf(lambda tf: list(tf.math.top_k(_ph(tf, x, "x"), 3)), {"x:0": x})


def test_top_k_signed_zeros_tie():
    # TF's kernel compares with `<`: -0.0 and 0.0 tie and keep their order (XLA's top_k would not).
    x = np.float32([[0.0, -0.0, 1.0, -0.0, 0.0], [-0.0, 0.0, -1.0, 0.0, -0.0]])
    run = compare_with_tf(lambda tf: list(tf.math.top_k(_ph(tf, x, "x"), 4)), {"x:0": x})
    got = jax.jit(run.graph.function(run.fetch_names[0], feeds=["x:0"]))({}, x)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(run.expected[0]))


def test_approx_top_k():
    # TF's CPU kernel is TopKV2's (exact; only reduction_dimension=-1 and is_max_k=True): the tuning
    # attributes change nothing, aggregate_to_topk=False included.
    x = RNG.permutation(2 * 300).reshape(2, 300).astype(np.float32)
    ties = np.float32([[1, 3, 3, 1, 3, 0], [0.0, -0.0, 2.0, -0.0, 0.0, -1.0]])
    half = RNG.standard_normal((3, 7)).astype(np.float16)

    def build(tf):
        p, t, h = _ph(tf, x, "x"), _ph(tf, ties, "t"), _ph(tf, half, "h")
        return [
            *tf.raw_ops.ApproxTopK(input=p, k=5),
            *tf.raw_ops.ApproxTopK(input=p[0], k=3, reduction_input_size_override=1000, reduction_dimension=-1),
            *tf.raw_ops.ApproxTopK(input=t, k=4),
            *tf.raw_ops.ApproxTopK(input=h, k=2),
        ]

    compare_with_tf(build, {"x:0": x, "t:0": ties, "h:0": half}, grads=True, grad_atol=1e-3)
    # TF's gradient of aggregate_to_topk=False expects the TPU's output size: no gradient here.
    compare_with_tf(lambda tf: list(tf.raw_ops.ApproxTopK(input=_ph(tf, x, "x"), k=4, recall_target=0.5,
                                                          aggregate_to_topk=False)), {"x:0": x})


def test_approx_top_k_other_dimensions_and_min_k():
    # TF has no CPU kernel for these: compare with the exact answer (XLA's CPU result).
    x = RNG.permutation(24).reshape(2, 3, 4).astype(np.float32)
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        p = _ph(tf, x, "x")
        tf.raw_ops.ApproxTopK(input=p, k=2, reduction_dimension=1, name="max1")
        tf.raw_ops.ApproxTopK(input=p, k=3, reduction_dimension=-1, is_max_k=False, name="min")
        tf.raw_ops.ApproxTopK(input=p, k=1, reduction_dimension=0, is_max_k=False, name="min0")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    f = graph.function(["max1:0", "max1:1", "min:0", "min:1", "min0:0", "min0:1"], feeds=["x:0"])
    order = np.argsort(-x, axis=1, kind="stable")[:, :2]
    want = [np.take_along_axis(x, order, 1), order]
    order = np.argsort(x, axis=-1, kind="stable")[..., :3]
    want += [np.take_along_axis(x, order, -1), order]
    order = np.argsort(x, axis=0, kind="stable")[:1]
    want += [np.take_along_axis(x, order, 0), order]
    for fn in (f, jax.jit(f)):
        for got, w in zip(fn({}, x), want):
            np.testing.assert_array_equal(got, w)
            assert got.dtype == w.dtype or got.dtype == np.int32


def test_approx_top_k_bad_k():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [5], name="x")
        tf.raw_ops.ApproxTopK(input=tf.identity(x, name="y"), k=4, name="top")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function("top:0", feeds=["y:0"])  # TF's shape check is bypassed
    with pytest.raises(jaxmeta.GraphError, match="k=4"):
        f({}, np.float32([1, 2, 3]))


def test_nth_element():
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    ties = np.float32([[3, 1, 2, 5, 4], [1, 1, 1, 0, 2], [2, 2, 7, 7, 7]])
    ints = RNG.integers(-5, 6, (4, 6)).astype(np.int32)

    def build(tf):
        p, t, i = _ph(tf, x, "x"), _ph(tf, ties, "t"), _ph(tf, ints, "i")
        return [
            tf.raw_ops.NthElement(input=p, n=0),
            tf.raw_ops.NthElement(input=p, n=4),
            tf.raw_ops.NthElement(input=p, n=1, reverse=True),
            tf.raw_ops.NthElement(input=p[0, 0], n=2),
            # Ties: TF's gradient shares the incoming gradient among the equal entries.
            tf.raw_ops.NthElement(input=t, n=1),
            tf.raw_ops.NthElement(input=t, n=2, reverse=True),
            tf.raw_ops.NthElement(input=i, n=3),
            tf.raw_ops.NthElement(input=i, n=0, reverse=True),
        ]

    compare_with_tf(build, {"x:0": x, "t:0": ties, "i:0": ints}, grads=True)


def test_nth_element_needs_static_n():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, None], name="x")
        tf.raw_ops.NthElement(input=x, n=tf.compat.v1.placeholder(tf.int32, [], name="n"), name="nth")
        tf.raw_ops.NthElement(input=x, n=4, name="far")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    with pytest.raises(jaxmeta.GraphError, match="n sets an output size"):
        graph.function("nth:0", feeds=["x:0", "n:0"])({}, np.zeros((2, 4), np.float32), np.int32(1))
    with pytest.raises(jaxmeta.GraphError, match=r"n=4 must be in \[0, 4\)"):
        graph.function("far:0", feeds=["x:0"])({}, np.zeros((2, 4), np.float32))


# -- small sparse ops --------------------------------------------------------------------------------


def test_sparse_to_dense():
    vals = np.float32([1.5, -2.0, 3.0])

    def build(tf):
        v = _ph(tf, vals, "v")
        return [
            tf.compat.v1.sparse_to_dense(tf.constant([[0, 1], [2, 0], [1, 3]]), [3, 4], v, default_value=-1.0,
                                         validate_indices=False),
            tf.compat.v1.sparse_to_dense(tf.constant([1, 4], tf.int64), tf.constant([6], tf.int64), tf.constant(7)),
        ]

    compare_with_tf(build, {"v:0": vals}, grads=True)

    # Scalar and 1-D indices, fed indices (TF cannot differentiate these).
    def build_1d(tf):
        v = _ph(tf, vals, "v")
        return [tf.compat.v1.sparse_to_dense(tf.constant(2), [3], v[0]),
                tf.compat.v1.sparse_to_dense(_ph(tf, np.int32([0, 2]), "i"), [4], v[:2])]

    compare_with_tf(build_1d, {"v:0": vals, "i:0": np.int32([0, 2])})


@pytest.mark.parametrize("new_shape", [[6, 2], [-1, 3], [2, 2, 3], [12]])
def test_sparse_reshape(new_shape):
    indices = np.int64([[0, 0, 1], [1, 2, 0], [1, 0, 1]])

    def build(tf):
        st = tf.sparse.SparseTensor(_ph(tf, indices, "i"), tf.constant([1.0, 2.0, 3.0]), [2, 3, 2])
        out = tf.sparse.reshape(st, new_shape)
        return [out.indices, out.dense_shape]

    compare_with_tf(build, {"i:0": indices})
    compare_with_tf(lambda tf: list(tf.raw_ops.SparseReshape(input_indices=tf.constant(indices),
                                                             input_shape=tf.constant([2, 3, 2], tf.int64),
                                                             new_shape=tf.constant(new_shape, tf.int64))))


@pytest.mark.parametrize("adjoint_a,adjoint_b", [(False, False), (True, False), (False, True), (True, True)])
def test_sparse_tensor_dense_matmul(adjoint_a, adjoint_b):
    indices = np.int64([[0, 1], [2, 0], [1, 1], [0, 1]])  # a repeated index adds up
    values = RNG.standard_normal(4).astype(np.float32)
    b = RNG.standard_normal((4, 3) if adjoint_a else (3, 4)).astype(np.float32)
    b = b.T.copy() if adjoint_b else b

    def build(tf):
        a = tf.sparse.SparseTensor(tf.constant(indices), _ph(tf, values, "v"), [4, 3])
        return tf.sparse.sparse_dense_matmul(a, _ph(tf, b, "b"), adjoint_a=adjoint_a, adjoint_b=adjoint_b)

    compare_with_tf(build, {"v:0": values, "b:0": b}, grads=True)


@pytest.mark.parametrize("nbins", [1, 5])
def test_histogram_fixed_width(nbins):
    values = np.float32([-1.0, 0.1, 0.6, 1.7, 2.3, 4.9, 5.5, 20.0])

    def build(tf):
        v = _ph(tf, values, "v")
        return [tf.histogram_fixed_width(v, [0.0, 5.0], nbins=nbins),
                tf.histogram_fixed_width(tf.constant([1, 7, 3, 3]), [0, 10], nbins=nbins, dtype=tf.int64)]

    compare_with_tf(build, {"v:0": values})


def test_histogram_fixed_width_needs_an_increasing_range():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        out = tf.histogram_fixed_width(tf.constant([1.0, 2.0]), _ph(tf, np.float32([0, 1]), "r"), nbins=3)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.InvalidArgumentError):
        sess.run(out, {"r:0": [1.0, 1.0]})
    f = jaxmeta.import_meta_graph(meta).function([out.name], ["r:0"])
    assert np.asarray(f({}, np.float32([0, 3]))[0]).tolist() == [0, 1, 1]
    with pytest.raises(jaxmeta.GraphError, match=r"value_range = \[1.0, 1.0\] is not increasing"):
        f({}, np.float32([1, 1]))
