"""The `ragged` family against TensorFlow: to_tensor, to_sparse, ragged.range and gather."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import case, compare_with_tf, get_tf, ph, run_cases, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle

VALUES = np.array([1.5, -2.0, 3.0, -0.5, 4.0, 7.0], np.float32)
SPLITS = np.array([0, 2, 2, 5, 6], np.int64)  # rows of 2, 0, 3 and 1


def _rt(tf, values, splits=SPLITS):
    return tf.RaggedTensor.from_row_splits(values, tf.constant(splits))


def test_to_tensor():
    run_cases([
        case(lambda tf: _rt(tf, ph(tf, "v", VALUES)).to_tensor(), {"v:0": VALUES}, grads=True),
        case(lambda tf: _rt(tf, ph(tf, "v", VALUES)).to_tensor(default_value=-9.0, shape=[3, 2]), {"v:0": VALUES},
             grads=True),
        case(lambda tf: _rt(tf, ph(tf, "v", VALUES)).to_tensor(shape=[6, 5]), {"v:0": VALUES}, grads=True),
        # ragged rank 2, and values with an inner dimension
        case(lambda tf: tf.ragged.constant([[[1, 2], [3]], [], [[4, 5, 6], [], [7]]]).to_tensor(), {}),
        case(lambda tf: tf.ragged.constant([[[1, 2], [3]], [], [[4, 5, 6], [], [7]]]).to_tensor(shape=[2, 2, 2]), {}),
        case(lambda tf: tf.RaggedTensor.from_row_splits(ph(tf, "w", VALUES.reshape(3, 2)), [0, 1, 3]).to_tensor(
            default_value=[5.0, 6.0]), {"w:0": VALUES.reshape(3, 2)}, grads=True),
        # value row ids (from_value_rowids, as strings.split makes)
        case(lambda tf: tf.RaggedTensor.from_value_rowids(ph(tf, "v", VALUES), [0, 0, 2, 2, 2, 4], nrows=6).to_tensor(),
             {"v:0": VALUES}, grads=True),
    ])


def test_to_tensor_of_fed_splits_with_a_static_shape_traces():
    # The row splits are fed: under jax.jit each value's place is computed on the device.
    compare_with_tf(lambda tf: [tf.RaggedTensor.from_row_splits(ph(tf, "v", VALUES), ph(tf, "s", SPLITS))
                                .to_tensor(shape=[4, 3])], {"v:0": VALUES, "s:0": SPLITS})


def test_to_sparse():
    run_cases([
        case(lambda tf: _sparse(_rt(tf, ph(tf, "v", VALUES)).to_sparse()), {"v:0": VALUES}),
        case(lambda tf: _sparse(tf.ragged.constant([[[1, 2], [3]], [], [[4, 5, 6], [], [7]]]).to_sparse()), {}),
        case(lambda tf: _sparse(tf.RaggedTensor.from_row_splits(ph(tf, "w", VALUES.reshape(3, 2)), [0, 1, 3])
                                .to_sparse()), {"w:0": VALUES.reshape(3, 2)}),
    ])


def _sparse(st):
    return [st.indices, st.values, st.dense_shape]


def test_strings_split_to_tensor_and_sparse():
    text = np.array([b"the cat sat", b"", b"a dog  ran on"], object)

    def build(tf):
        words = tf.strings.split(ph(tf, "t", text))
        return [words.to_tensor(default_value="<pad>"), *_sparse(words.to_sparse()), words.to_tensor(shape=[2, 2])]

    compare_with_tf(build, {"t:0": text}, jit_modes=(False,))


def test_range_and_gather():
    run_cases([
        case(lambda tf: _flat(tf.ragged.range(tf.constant([0, 5, 3, 2]), tf.constant([4, 1, 3, 9]),
                                              tf.constant([1, -2, 1, 3]))), {}),
        case(lambda tf: _flat(tf.ragged.range(tf.constant([0.5, 2.0]), 3.0, 0.75)), {}),
        case(lambda tf: _flat(tf.ragged.range(tf.constant(3, tf.int64))), {}),
        case(lambda tf: _flat(tf.gather(_rt(tf, ph(tf, "v", VALUES)), tf.constant([3, 0, 0, 1]))),
             {"v:0": VALUES}),
        case(lambda tf: _flat(tf.gather(_rt(tf, ph(tf, "v", VALUES)), tf.constant([[2, 1], [0, 3], [3, 3]]))),
             {"v:0": VALUES}),
        case(lambda tf: _flat(tf.gather(tf.ragged.constant([[[1, 2], [3]], [], [[4, 5, 6], [], [7]]]),
                                        tf.constant([2, 0]))), {}),
    ])


def _flat(rt):
    return [*rt.nested_row_splits, rt.flat_values]


def test_ragged_range_of_fed_limits_needs_concrete_values():
    get_tf()
    limits = np.array([3, 1], np.int32)
    run = run_tf(lambda tf: _flat(tf.ragged.range(ph(tf, "n", limits))), {"n:0": limits})
    f = run.graph.function(run.fetch_names, feeds=["n:0"])
    for got, want in zip(f({}, limits), run.expected):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(jaxmeta.GraphError, match="RaggedRange.*values of starts, limits and deltas"):
        jax.jit(f)({}, limits)


def test_damaged_row_splits_are_refused():
    """Constant row splits that TF's kernels would refuse get a GraphError naming the node, not
    values scattered to wrong places."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        values = tf.constant(VALUES)
        bad = tf.constant(np.array([0, 4, 2, 6], np.int64))
        tf.raw_ops.RaggedTensorToTensor(shape=tf.constant(-1, tf.int64), values=values,
                                        default_value=tf.constant(0.0), row_partition_tensors=[bad],
                                        row_partition_types=["ROW_SPLITS"], name="dense")
        tf.raw_ops.RaggedGather(params_nested_splits=[tf.constant(np.array([0, 2, 7], np.int64))],
                                params_dense_values=values, indices=tf.constant([1]), OUTPUT_RAGGED_RANK=1,
                                name="gather")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    for fetch in ("dense:0", "gather:1"):
        with pytest.raises(jaxmeta.GraphError, match=r"row splits must start at 0, never decrease and end"):
            graph.function(fetch)({})
