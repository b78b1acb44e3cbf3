"""The `sparse` family against TensorFlow: SparseTensor arithmetic with and without jax.jit."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import case, ph, run_cases, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle

# Unsorted entries of a 3 x 4 x 2 SparseTensor (rows 1 empty), and of a 3 x 4 matrix.
IDX3 = np.array([[2, 1, 0], [0, 3, 1], [0, 0, 0], [2, 1, 1], [0, 3, 0]], np.int64)
VAL3 = np.array([1.5, -2.0, 3.0, -0.5, 4.0], np.float32)
SHP3 = np.array([3, 4, 2], np.int64)
IDX2 = np.array([[1, 2], [0, 0], [2, 3], [0, 2]], np.int64)
VAL2 = np.array([-1.0, 2.0, 5.0, -3.0], np.float32)
SHP2 = np.array([3, 4], np.int64)


def feeds(**arrays):
    return {f"{k}:0": v for k, v in arrays.items()}


def sparse_case(build, extra=None, *, grads=False, **arrays):
    arrays = {"i": IDX3, "v": VAL3, "s": SHP3, **arrays}
    if extra:
        arrays.update(extra)

    def built(tf):
        p = {k: ph(tf, k, v) for k, v in arrays.items()}
        return build(tf, p)

    return case(built, feeds(**arrays), grads=grads)


def test_reorder_and_softmax():
    run_cases([
        sparse_case(lambda tf, p: list(tf.raw_ops.SparseReorder(input_indices=p["i"], input_values=p["v"],
                                                                input_shape=p["s"]))),
        sparse_case(lambda tf, p: tf.raw_ops.SparseSoftmax(sp_indices=p["i"], sp_values=p["v"], sp_shape=p["s"])),
        sparse_case(lambda tf, p: tf.raw_ops.SparseSoftmax(sp_indices=p["i"], sp_values=p["v"], sp_shape=p["s"]),
                    i=IDX2, v=VAL2, s=SHP2),
        sparse_case(lambda tf, p: tf.sparse.softmax(tf.sparse.reorder(tf.SparseTensor(p["i"], p["v"], p["s"]))).values,
                    i=IDX2, v=VAL2, s=SHP2),
    ])


@pytest.mark.parametrize("axes,keep", [([1], False), ([0, 2], True), ([-1], False), ([], False), ([0, 1, 2], False)])
def test_reduce_sum_and_max(axes, keep):
    run_cases([
        sparse_case(lambda tf, p: tf.raw_ops.SparseReduceSum(input_indices=p["i"], input_values=p["v"],
                                                             input_shape=SHP3, reduction_axes=axes, keep_dims=keep)),
        sparse_case(lambda tf, p: tf.raw_ops.SparseReduceMax(input_indices=p["i"], input_values=p["v"],
                                                             input_shape=SHP3, reduction_axes=axes, keep_dims=keep)),
        sparse_case(lambda tf, p: tf.raw_ops.SparseReduceMax(input_indices=p["i"], input_values=p["v"] * 0 - 7,
                                                             input_shape=SHP3, reduction_axes=axes, keep_dims=keep)),
        sparse_case(lambda tf, p: tf.raw_ops.SparseReduceSum(input_indices=p["i"], input_values=tf.cast(p["v"] * 2,
                                                             tf.int32), input_shape=SHP3, reduction_axes=axes,
                                                             keep_dims=keep)),
    ])


def test_dense_operands():
    dense = np.arange(24, dtype=np.float32).reshape(3, 4, 2) - 11.0
    run_cases([
        sparse_case(lambda tf, p: tf.raw_ops.SparseTensorDenseAdd(a_indices=p["i"], a_values=p["v"], a_shape=p["s"],
                                                                  b=p["d"]), {"d": dense}, grads=True),
        *[sparse_case(lambda tf, p, op=op: getattr(tf.raw_ops, op)(sp_indices=p["i"], sp_values=p["v"],
                                                                   sp_shape=p["s"], dense=p["d"]), {"d": d})
          for op in ("SparseDenseCwiseAdd", "SparseDenseCwiseMul", "SparseDenseCwiseDiv")
          for d in (dense + 0.5, np.array([2.0, -4.0], np.float32), np.full((4, 1), 3.0, np.float32))],
        sparse_case(lambda tf, p: tf.raw_ops.SparseDenseCwiseDiv(sp_indices=p["i"], sp_values=p["iv"],
                                                                 sp_shape=p["s"], dense=p["id"]),
                    {"iv": np.array([7, -7, 9, 5, -3], np.int32), "id": np.array([2, -2], np.int32)}),
    ])


def test_concat():
    run_cases([
        sparse_case(lambda tf, p, dim=dim: list(tf.raw_ops.SparseConcat(
            indices=[p["i"], p["i2"]], values=[p["v"], p["v2"]], shapes=[p["s"], p["s2"]], concat_dim=dim)),
            {"i2": IDX3[:3] % [1, 2, 1], "v2": VAL3[:3] * 10, "s2": np.array([1, 4, 2], np.int64) if dim == 0 else
             np.array([3, 2, 2], np.int64) if dim == 1 else np.array([3, 4, 2], np.int64)})
        for dim in (0, 1, -1)
    ])


def _cross_case(hashed, buckets, key, ints=False):
    if ints:
        sparse = [(np.array([[0, 0], [1, 0], [1, 1], [2, 0]], np.int64), np.array([3, -4, 5, 123456789], np.int64))]
        dense = [np.array([[1, 7], [2, 8], [0, 9]], np.int64)]
    else:
        sparse = [(np.array([[0, 0], [0, 1], [2, 0]], np.int64), np.array([b"x", b"y", b"z"], object)),
                  (np.array([[0, 0], [0, 1], [1, 0], [2, 0], [2, 1]], np.int64),
                   np.array([b"7", b"8", b"9", b"tarkus", b""], object))]
        dense = [np.array([[b"p"], [b"q"], [b"r"]], object)]
    arrays = {}
    for k, (ind, val) in enumerate(sparse):
        arrays.update({f"i{k}": ind, f"v{k}": val})
    arrays.update({f"d{k}": d for k, d in enumerate(dense)})

    def build(tf):
        p = {k: ph(tf, k, v) for k, v in arrays.items()}
        internal = tf.int64 if ints else tf.string
        return list(tf.raw_ops.SparseCross(
            indices=[p[f"i{k}"] for k in range(len(sparse))], values=[p[f"v{k}"] for k in range(len(sparse))],
            shapes=[tf.constant([3, 2], tf.int64)] * len(sparse), dense_inputs=[p[f"d{k}"] for k in range(len(dense))],
            hashed_output=hashed, num_buckets=buckets, hash_key=key, out_type=tf.int64 if hashed else tf.string,
            internal_type=internal))

    return build, feeds(**arrays)


@pytest.mark.parametrize("hashed,buckets,ints", [(False, 0, False), (True, 100, False), (True, 2**31 - 1, False),
                                                 (False, 0, True), (True, 1000, True), (True, 2**31 - 1, True)])
def test_sparse_cross(hashed, buckets, ints):
    """Feature crosses on concrete inputs (strings or int64), in a Session without jit."""
    build, fed = _cross_case(hashed, buckets, 0xDECAFCAFFE, ints)
    run = run_tf(build, fed)
    with jaxmeta.Session(run.graph, jit=False) as sess:
        got = sess.run(run.fetch_names, fed)
    for name, g, w in zip(run.fetch_names, got, run.expected):
        assert np.asarray(g).tolist() == np.asarray(w).tolist(), name


@pytest.mark.parametrize("thresh", [0.0, 1.0])
def test_sparse_add(thresh):
    """tf.sparse.add of two canonical SparseTensors, and its gradient, on concrete values."""
    a_idx = np.array([[0, 0], [0, 2], [1, 1], [2, 3]], np.int64)
    b_idx = np.array([[0, 2], [1, 0], [1, 1], [2, 0]], np.int64)
    arrays = {"ai": a_idx, "av": np.array([1.0, 2.0, -0.5, 4.0], np.float32),
              "bi": b_idx, "bv": np.array([-1.5, 3.0, 0.25, 5.0], np.float32)}

    def build(tf):
        p = {k: ph(tf, k, v) for k, v in arrays.items()}
        a = tf.SparseTensor(p["ai"], p["av"], [3, 4])
        b = tf.SparseTensor(p["bi"], p["bv"], [3, 4])
        total = tf.sparse.add(a, b, threshold=thresh)
        loss = tf.reduce_sum(total.values * tf.range(1.0, tf.cast(tf.size(total.values), tf.float32) + 1.0))
        return [total.indices, total.values, *tf.gradients(loss, [p["av"], p["bv"]])]

    run = run_tf(build, feeds(**arrays))
    with jaxmeta.Session(run.graph, jit=False) as sess:
        got = sess.run(run.fetch_names, feeds(**arrays))
    for name, g, w in zip(run.fetch_names, got, run.expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, err_msg=name)
