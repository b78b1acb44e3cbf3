"""`checked_indices`: indices outside what they index, in every op that reads or writes rows.

TF's CPU kernels reject such an index. jaxmeta raises a GraphError naming the node wherever the
index is known (constants, any call without `jax.jit`); under jit, where nothing can raise, a
gather reads zeros and a scatter skips the entry (TF's GPU kernels' rule) — never NumPy's and
JAX's wrap-around of negative indices or clamping of large ones.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import assert_close, get_tf

import jaxmeta
from jaxmeta.ops.registry import checked_indices

pytestmark = pytest.mark.oracle

PARAMS = np.arange(1, 13, dtype=np.float32).reshape(4, 3)
UPDATES = np.float32([[10, 20, 30], [40, 50, 60], [70, 80, 90]])
BAD = [-1, 4, -7]


def _import(tf, build, n):
    """`build(tf, indices)` on a fed int32 index vector of length n: TF's graph and jaxmeta's."""
    g = tf.Graph()
    with g.as_default():
        i = tf.compat.v1.placeholder(tf.int32, [n], name="i")
        out = build(tf, i)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        init = tf.compat.v1.global_variables_initializer()
    return g, out, init, jaxmeta.import_meta_graph(meta)


def _tf_run(tf, g, out, init, indices):
    with tf.compat.v1.Session(graph=g) as sess:
        sess.run(init)
        return sess.run(out, {"i:0": indices})


# -- gathers: under jit, the bad entry reads zeros -------------------------------------------------


def _resource_gather(tf, i):
    v = tf.compat.v1.get_variable("v", initializer=PARAMS, use_resource=True)
    return tf.nn.embedding_lookup(v, i)


GATHERS = {  # op: (build, the result under jit for indices [0, 2, bad])
    "gather": (lambda tf, i: tf.gather(PARAMS, i), PARAMS[[0, 2]].tolist() + [[0, 0, 0]]),
    "gather_v1": (lambda tf, i: tf.raw_ops.Gather(params=PARAMS, indices=i), PARAMS[[0, 2]].tolist() + [[0, 0, 0]]),
    "gather_nd": (lambda tf, i: tf.gather_nd(PARAMS, tf.stack([i, tf.zeros_like(i)], axis=1)), [1, 7, 0]),
    "resource_gather": (_resource_gather, PARAMS[[0, 2]].tolist() + [[0, 0, 0]]),
    "sparse_segment_sum": (lambda tf, i: tf.compat.v1.sparse_segment_sum(PARAMS, i, [0, 0, 1], num_segments=2),
                           [(PARAMS[0] + PARAMS[2]).tolist(), [0, 0, 0]]),
}


def _rejected_by_both(build, indices, match):
    """Imports `build(tf, i)`; TF and jaxmeta (without jit) must both reject `indices`. Returns
    jaxmeta's result for other indices (`run(i, jit=True)`), and TF's graph."""
    tf = get_tf()
    g, out, init, graph = _import(tf, build, len(indices))
    with pytest.raises(tf.errors.InvalidArgumentError):
        _tf_run(tf, g, out, init, indices)
    step = graph.step([out.name], ["i:0"])
    variables = graph.init_variables()
    with pytest.raises(jaxmeta.GraphError, match=match):
        step(variables, indices)
    return (lambda i, jit=True: (jax.jit(step) if jit else step)(variables, i)[0][0]), (tf, g, out, init)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("op", sorted(GATHERS))
def test_gather_out_of_range(op, bad):
    build, expect = GATHERS[op]
    run, tf_graph = _rejected_by_both(build, np.int32([0, 2, bad]), rf"indices\[2\] = \[?{bad}\b")
    assert_close(run(np.int32([0, 2, bad])), np.asarray(expect, np.float32), rtol=0, atol=0, what=op)
    # In-range indices give TF's result.
    assert_close(run(np.int32([0, 2, 1])), _tf_run(*tf_graph, np.int32([0, 2, 1])), rtol=0, atol=0, what=op)


# -- scatters: under jit, the bad entry is skipped -------------------------------------------------


def _scatter_update(tf, i, updates):
    v = tf.compat.v1.Variable(PARAMS, name="v", use_resource=False)
    return tf.compat.v1.scatter_update(v, i, updates)


def _resource_scatter_add(tf, i, updates):
    v = tf.compat.v1.Variable(PARAMS, name="v", use_resource=True)
    with tf.control_dependencies([v.scatter_add(tf.IndexedSlices(updates, i))]):
        return v.read_value()


def _sparse_apply(tf, i, updates):
    v = tf.compat.v1.Variable(PARAMS, name="v", use_resource=True)
    accum = tf.compat.v1.Variable(PARAMS / 2, name="accum", use_resource=True)
    step = tf.raw_ops.ResourceSparseApplyMomentum(var=v.handle, accum=accum.handle, lr=tf.constant(0.5),
                                                  grad=updates, indices=i, momentum=tf.constant(0.9))
    with tf.control_dependencies([step]):
        return v.read_value()


SCATTERS = {
    "scatter_update": _scatter_update,
    "resource_scatter_add": _resource_scatter_add,
    "scatter_nd": lambda tf, i, u: tf.scatter_nd(tf.expand_dims(i, 1), u, [4, 3]),
    "tensor_scatter_update": lambda tf, i, u: tf.tensor_scatter_nd_update(PARAMS, tf.expand_dims(i, 1), u),
    "sparse_apply": _sparse_apply,
    "sparse_to_dense": lambda tf, i, u: tf.raw_ops.SparseToDense(
        sparse_indices=_coordinates(tf, i), output_shape=[4, 3], sparse_values=u[:, 0], default_value=-1.0,
        validate_indices=False),
    "sparse_tensor_dense_add": lambda tf, i, u: tf.raw_ops.SparseTensorDenseAdd(
        a_indices=_coordinates(tf, i), a_values=u[:, 0], a_shape=np.int64([4, 3]), b=PARAMS),
    "sparse_dense_matmul": lambda tf, i, u: tf.sparse.sparse_dense_matmul(
        tf.SparseTensor(_coordinates(tf, i), u[:, 0], [4, 3]), PARAMS.T),
}


def _coordinates(tf, i):
    """[i, 0], [i, 1], ...: one sparse entry per index."""
    return tf.cast(tf.stack([i, tf.range(tf.size(i))], axis=1), tf.int64)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("op", sorted(SCATTERS))
def test_scatter_out_of_range(op, bad):
    run, (tf, *_) = _rejected_by_both(lambda tf, i: SCATTERS[op](tf, i, UPDATES), np.int32([0, 2, bad]),
                                      r"indices\[2\]")
    # TF's result for the first two entries alone.
    g2, out2, init2, _ = _import(tf, lambda tf, i: SCATTERS[op](tf, i, UPDATES[:2]), 2)
    assert_close(run(np.int32([0, 2, bad])), _tf_run(tf, g2, out2, init2, np.int32([0, 2])), rtol=0, atol=0,
                 what=op)


# -- segment ids -----------------------------------------------------------------------------------


def test_unsorted_segment_ids():
    """`UnsortedSegment*` drops negative ids (as TF) and rejects ids past `num_segments`."""
    tf = get_tf()
    g, out, init, graph = _import(tf, lambda tf, i: tf.math.unsorted_segment_sum(PARAMS[:3], i, 2), 3)
    f = graph.function([out.name], ["i:0"])
    for jit in (False, True):
        (got,) = (jax.jit(f) if jit else f)({}, np.int32([0, -1, 1]))
        assert_close(got, _tf_run(tf, g, out, init, np.int32([0, -1, 1])), rtol=0, atol=0, what=f"jit={jit}")
    with pytest.raises(tf.errors.InvalidArgumentError):
        _tf_run(tf, g, out, init, np.int32([0, 2, 1]))
    with pytest.raises(jaxmeta.GraphError, match=r"segment_ids\[1\] = 2 is not below 2"):
        f({}, np.int32([0, 2, 1]))


def test_sorted_segment_ids_must_be_sorted():
    _rejected_by_both(lambda tf, i: tf.math.segment_sum(PARAMS[:3], i), np.int32([1, 0, 1]),
                      r"not sorted \(segment_ids\[1\] = 0 follows 1\)")


def test_checked_indices_messages():
    node = type("N", (), {"name": "n", "type": "GatherNd"})()
    with pytest.raises(jaxmeta.GraphError, match=r"'n' \(GatherNd\): indices\[1\] = \[0, 5\] does not index into "
                                                 r"shape \[2, 5\]"):
        checked_indices(node, np.int32([[1, 1], [0, 5]]), (2, 5))
    np.testing.assert_array_equal(checked_indices(node, np.int32([[1, 4]]), (2, 5)), [[1, 4]])
    traced = jax.jit(lambda i: checked_indices(node, i, (2, 5)))(np.int32([[1, -1], [2, 4], [1, 4]]))
    np.testing.assert_array_equal(traced, [[1, 5], [2, 4], [1, 4]])


@pytest.mark.parametrize("op", ["InplaceUpdate", "InplaceAdd", "InplaceSub"])
def test_inplace_rows_wrap_as_in_tf(op):
    """TF's Inplace* kernels take any row index modulo the rows (no error)."""
    tf = get_tf()
    g, out, init, graph = _import(tf, lambda tf, i: getattr(tf.raw_ops, op)(x=PARAMS, i=i, v=UPDATES), 3)
    f = graph.function([out.name], ["i:0"])
    for indices in ([0, 2, -1], [0, 2, 4], [0, 3, -7], [1, 100, 2]):
        want = _tf_run(tf, g, out, init, np.int32(indices))
        for jit in (False, True):
            (got,) = (jax.jit(f) if jit else f)({}, np.int32(indices))
            assert_close(got, want, rtol=0, atol=0, what=f"{indices} jit={jit}")


def test_dynamic_stitch_negative_index():
    _rejected_by_both(lambda tf, i: tf.dynamic_stitch([i, [3]], [UPDATES, PARAMS[:1]]), np.int32([0, -1, 2]),
                      r"indices\[1\] = -1 is not in \[0, 4\)")


def test_dynamic_partition_out_of_range():
    _rejected_by_both(lambda tf, i: tf.dynamic_partition(UPDATES, i, 2)[0], np.int32([0, 2, 1]),
                      r"partitions\[1\] = 2 is not in \[0, 2\)")


@pytest.mark.parametrize("case", ["sparse_xent", "reverse_sequence", "bincount"])
def test_other_ops_that_check_values(case):
    """Labels of a sparse cross-entropy, sequence lengths, counted values: refused as in TF where
    known; under jit NaN losses, NaN rows past the sequence, dropped counts."""
    build, bad, match, good = {
        "sparse_xent": (lambda tf, i: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=i, logits=PARAMS[:3]),
                        [0, 3, 1], r"labels\[1\] = 3 is not in \[0, 3\)", [0, 2, 1]),
        "reverse_sequence": (lambda tf, i: tf.reverse_sequence(PARAMS[:3], i, seq_axis=1, batch_axis=0),
                             [0, 4, 1], r"seq_lengths\[1\] = 4 is not in \[0, 4\)", [0, 3, 2]),
        "bincount": (lambda tf, i: tf.math.bincount(i), [0, -2, 1], r"a value is negative \(-2\)", [0, 4, 1]),
    }[case]
    run, tf_graph = _rejected_by_both(build, np.int32(bad), match)
    want = _tf_run(*tf_graph, np.int32(good))
    for jit in (False,) if case == "bincount" else (False, True):  # bincount's size is max + 1: no jit
        assert_close(run(np.int32(good), jit), want, rtol=1e-6, atol=1e-6, what=f"{case} jit={jit}")
