"""The `extra` family against TensorFlow: LSTM block kernels, XLA dot/conv, combined NMS,
TensorListResize, SparseFillEmptyRows, CTCGreedyDecoder, Placeholder."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import case, compare_with_tf, get_tf, ph, run_cases, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle




def randn(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)



# -- LSTM block kernels ---------------------------------------------------------------------------

# (batch, input, cell, forget_bias, cell_clip, use_peephole)
LSTM = [
    (2, 3, 4, 1.0, -1.0, False),
    (3, 2, 5, 0.5, 0.3, True),
    (1, 4, 3, 0.0, 3.0, True),
    (2, 1, 2, 2.0, 0.0, False),
]


def _lstm_feeds(x_shape, batch, inp, cell, seed, w_scale=1.0):
    """Inputs of the fused LSTM ops: x, previous state, weights, peepholes, bias."""
    return {
        "x:0": randn(*x_shape, seed=seed),
        "cs:0": randn(batch, cell, seed=seed + 1),
        "h:0": randn(batch, cell, seed=seed + 2),
        "w:0": randn(inp + cell, 4 * cell, seed=seed + 3) * w_scale,
        "wci:0": randn(cell, seed=seed + 4),
        "wcf:0": randn(cell, seed=seed + 5),
        "wco:0": randn(cell, seed=seed + 6),
        "b:0": randn(4 * cell, seed=seed + 7),
    }


def case_lstm_cell(batch, inp, cell, forget, clip, peephole, seed):
    feeds = _lstm_feeds((batch, inp), batch, inp, cell, seed)

    def build(tf):
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in feeds.items()}
        return list(tf.raw_ops.LSTMBlockCell(
            x=p["x"], cs_prev=p["cs"], h_prev=p["h"], w=p["w"], wci=p["wci"], wcf=p["wcf"], wco=p["wco"],
            b=p["b"], forget_bias=forget, cell_clip=clip, use_peephole=peephole,
        ))

    # TF registers no gradient for LSTMBlockCell (the fused-cell gradient lived in tf.contrib).
    return case(build, feeds, rtol=1e-4, atol=1e-5)


def case_block_lstm(time, seq_len, batch, inp, cell, forget, clip, peephole, v2, seed, grads=False):
    feeds = _lstm_feeds((time, batch, inp), batch, inp, cell, seed, w_scale=0.5)

    def build(tf):
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in feeds.items()}
        args = dict(seq_len_max=tf.constant(seq_len, tf.int64), x=p["x"], cs_prev=p["cs"], h_prev=p["h"],
                    w=p["w"], wci=p["wci"], wcf=p["wcf"], wco=p["wco"], b=p["b"], cell_clip=clip,
                    use_peephole=peephole)
        outs = tf.raw_ops.BlockLSTMV2(**args) if v2 else tf.raw_ops.BlockLSTM(forget_bias=forget, **args)
        # TF's BlockLSTMGrad back-propagates only through cs and h (and ignores cell_clip); past
        # seq_len_max TF zeroes only cs and h and leaves the gate outputs unset.
        return [outs[1], outs[6]] if grads or seq_len < time else list(outs)

    return case(build, feeds, grads=grads, rtol=1e-4, atol=1e-5)


def test_lstm_block_cell():
    run_cases([case_lstm_cell(*c, seed=10 * i) for i, c in enumerate(LSTM)])


def test_block_lstm():
    run_cases([
        case_block_lstm(4, 4, 2, 3, 4, 1.0, -1.0, False, False, 0),
        case_block_lstm(5, 3, 2, 2, 3, 0.5, 0.0, True, False, 10),
        case_block_lstm(3, 3, 1, 2, 3, 1.0, 0.5, True, False, 20),
        case_block_lstm(4, 4, 2, 3, 2, 0.0, 0.0, False, True, 30),
        case_block_lstm(5, 2, 3, 2, 3, 0.0, -1.0, True, True, 40),
        case_block_lstm(3, 3, 2, 2, 2, 0.0, 0.4, True, True, 50),
        case_block_lstm(4, 3, 2, 3, 4, 1.0, -1.0, True, False, 60, grads=True),
        # (No BlockLSTMV2 gradients: TF's disagree with finite differences of its own forward pass.)
    ])


# -- XLA dot / conv -------------------------------------------------------------------------------


def _xla():
    get_tf()
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops
    from tensorflow.compiler.xla import xla_data_pb2

    return gen_xla_ops, xla_data_pb2


# (lhs shape, rhs shape, lhs contracting, rhs contracting, lhs batch, rhs batch)
DOTS = [
    ((2, 3), (3, 4), [1], [0], [], []),
    ((3, 2), (3, 4), [0], [0], [], []),
    ((5, 2, 3), (5, 3, 4), [2], [1], [0], [0]),
    ((2, 4, 3, 5), (3, 2, 6, 4), [1, 2], [3, 0], [0], [1]),
    ((4,), (4,), [0], [0], [], []),
]


def case_xla_dot(lhs_shape, rhs_shape, lc, rc, lb, rb, v2, seed, precision=None):
    xla, pb = _xla()
    lhs, rhs = randn(*lhs_shape, seed=seed), randn(*rhs_shape, seed=seed + 1)
    dn = pb.DotDimensionNumbers(lhs_contracting_dimensions=lc, rhs_contracting_dimensions=rc,
                                lhs_batch_dimensions=lb, rhs_batch_dimensions=rb).SerializeToString()
    pc = pb.PrecisionConfig(operand_precision=precision or []).SerializeToString()

    def build(tf):
        a, b = ph(tf, "lhs", lhs), ph(tf, "rhs", rhs)
        if v2:
            return xla.xla_dot_v2(a, b, dn, pc, preferred_element_type=tf.float32)
        return xla.xla_dot(a, b, dn, pc)

    # TF registers no gradients for the Xla* ops.
    return case(build, {"lhs:0": lhs, "rhs:0": rhs}, rtol=1e-4, atol=1e-5)


def test_xla_dot():
    cases = [case_xla_dot(*d, v2=v2, seed=i) for i, d in enumerate(DOTS) for v2 in (True, False)]
    cases.append(case_xla_dot(*DOTS[2], v2=True, seed=9, precision=[2, 2]))
    run_cases(cases)


def test_xla_dot_int8_to_int32():
    xla, pb = _xla()
    lhs = np.random.default_rng(0).integers(-100, 100, (3, 4)).astype(np.int8)
    rhs = np.random.default_rng(1).integers(-100, 100, (4, 2)).astype(np.int8)
    dn = pb.DotDimensionNumbers(lhs_contracting_dimensions=[1], rhs_contracting_dimensions=[0]).SerializeToString()

    def build(tf):
        return xla.xla_dot_v2(ph(tf, "a", lhs), ph(tf, "b", rhs), dn, b"", preferred_element_type=tf.int32)

    compare_with_tf(build, {"a:0": lhs, "b:0": rhs})


def test_xla_dot_unsupported_precision_algorithm():
    xla, pb = _xla()
    dn = pb.DotDimensionNumbers(lhs_contracting_dimensions=[1], rhs_contracting_dimensions=[0]).SerializeToString()
    pc = pb.PrecisionConfig(algorithm=pb.PrecisionConfig.ALG_DOT_F32_F32_F32).SerializeToString()
    a = randn(2, 3)

    def build(tf):
        return xla.xla_dot_v2(ph(tf, "a", a), tf.ones([3, 2]), dn, pc, preferred_element_type=tf.float32)

    run = run_tf(build, {"a:0": a})
    with pytest.raises(jaxmeta.GraphError, match="algorithm"):
        run.graph.function(run.fetch_names, feeds=["a:0"])({}, a)


def test_proto_decoder_unpacked_and_negative():
    from jaxmeta.ops.extra import _proto_ints

    # field 1 unpacked twice (varint 3 and 300), field 3 packed [1, 2], field 2 = -1 (10-byte varint)
    data = b"\x08\x03\x08\xac\x02\x1a\x02\x01\x02\x10" + b"\xff" * 9 + b"\x01"
    assert _proto_ints(data) == {1: [3, 300], 3: [1, 2], 2: [-1]}
    with pytest.raises(ValueError):
        _proto_ints(b"\x08")


# (lhs NHWC shape, rhs HWIO shape, strides, padding pairs, lhs dilation, rhs dilation, groups)
CONVS = [
    ((1, 5, 5, 2), (3, 3, 2, 4), [1, 1], [[1, 1], [1, 1]], [1, 1], [1, 1], 1),
    ((2, 6, 7, 3), (2, 3, 3, 2), [2, 1], [[0, 1], [2, 0]], [1, 1], [1, 1], 1),
    ((1, 5, 6, 2), (3, 2, 2, 3), [1, 2], [[1, 2], [0, 0]], [2, 1], [1, 2], 1),
    ((1, 6, 6, 4), (3, 3, 2, 4), [1, 1], [[1, 1], [1, 1]], [1, 1], [1, 1], 2),
]


def case_xla_conv(xs, ws, strides, pads, lhs_dil, rhs_dil, groups, v2, nchw, seed):
    xla, pb = _xla()
    x, w = randn(*xs, seed=seed), randn(*ws, seed=seed + 1)
    if nchw:  # lhs/out as NCHW, kernel as OIHW
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        w = np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))
        dn = pb.ConvolutionDimensionNumbers(
            input_batch_dimension=0, input_feature_dimension=1, input_spatial_dimensions=[2, 3],
            kernel_output_feature_dimension=0, kernel_input_feature_dimension=1, kernel_spatial_dimensions=[2, 3],
            output_batch_dimension=0, output_feature_dimension=1, output_spatial_dimensions=[2, 3])
    else:
        dn = pb.ConvolutionDimensionNumbers(
            input_batch_dimension=0, input_feature_dimension=3, input_spatial_dimensions=[1, 2],
            kernel_input_feature_dimension=2, kernel_output_feature_dimension=3, kernel_spatial_dimensions=[0, 1],
            output_batch_dimension=0, output_feature_dimension=3, output_spatial_dimensions=[1, 2])
    dn = dn.SerializeToString()

    def build(tf):
        args = [ph(tf, "x", x), ph(tf, "w", w), tf.constant(strides), tf.constant(pads), tf.constant(lhs_dil),
                tf.constant(rhs_dil), tf.constant(groups)]
        if v2:
            return xla.xla_conv_v2(*args, dimension_numbers=dn, precision_config=b"",
                                   preferred_element_type=tf.float32)
        return xla.xla_conv(*args, dimension_numbers=dn, precision_config=b"")

    return case(build, {"x:0": x, "w:0": w}, rtol=1e-4, atol=1e-5)


def test_xla_conv():
    run_cases([
        case_xla_conv(*c, v2=v2, nchw=nchw, seed=i)
        for i, c in enumerate(CONVS) for v2 in (True, False) for nchw in (False, True)
    ])


# -- CombinedNonMaxSuppression --------------------------------------------------------------------


def _boxes(rng, *lead):
    y, x = rng.uniform(-0.2, 1.0, (2, *lead))
    h, w = rng.uniform(0.05, 0.5, (2, *lead))
    return np.stack([y, x, y + h, x + w], axis=-1).astype(np.float32)


# (batch, num_boxes, q, classes, per class, total, iou, score threshold, pad_per_class, clip)
COMBINED = [
    (2, 12, 1, 3, 4, 8, 0.5, 0.1, False, True),
    (1, 10, 3, 3, 5, 20, 0.3, -1.0, False, False),
    (3, 8, 2, 2, 3, 10, 0.6, 0.5, True, True),
    (2, 6, 1, 4, 10, 5, 0.5, 0.0, True, False),
    (1, 5, 1, 1, 2, 7, 0.7, 2.5, False, True),  # threshold above every score: all padding
]


def case_combined_nms(batch, n, q, classes, per_class, total, iou, thr, pad, clip, seed, eager=False):
    rng = np.random.default_rng(seed)
    boxes = _boxes(rng, batch, n, q)
    scores = rng.permutation(batch * n * classes).reshape(batch, n, classes).astype(np.float32) / (batch * n * classes)
    scores = scores * 2.0  # distinct scores: TF does not order equal scores stably across classes

    def build(tf):
        return list(tf.raw_ops.CombinedNonMaxSuppression(
            boxes=ph(tf, "boxes", boxes), scores=ph(tf, "scores", scores),
            max_output_size_per_class=tf.constant(per_class), max_total_size=tf.constant(total),
            iou_threshold=tf.constant(iou), score_threshold=tf.constant(thr), pad_per_class=pad, clip_boxes=clip,
        ))

    # Op-by-op (non-jit) runs compile every batched primitive of the NMS loop afresh (seconds per
    # case), so only the first case also runs without jit.
    return case(build, {"boxes:0": boxes, "scores:0": scores}, jit_modes=(False, True) if eager else (True,))


def test_combined_non_max_suppression():
    run_cases([case_combined_nms(*c, seed=i, eager=i == 0) for i, c in enumerate(COMBINED)])


# -- TensorListResize -----------------------------------------------------------------------------


def case_list_resize(size, seed):
    items = randn(4, 3, seed=seed)

    def build(tf):
        lst = tf.raw_ops.TensorListFromTensor(tensor=ph(tf, "x", items), element_shape=tf.constant([3]))
        lst = tf.raw_ops.TensorListResize(input_handle=lst, size=tf.constant(size))
        stacked = tf.raw_ops.TensorListStack(input_handle=lst, element_shape=tf.constant([3]),
                                             element_dtype=tf.float32)
        return stacked, tf.raw_ops.TensorListLength(input_handle=lst)

    return case(build, {"x:0": items}, grads=True)


def case_pushed_list_resize(size, seed):
    items = randn(3, 2, seed=seed)

    def build(tf):
        x = ph(tf, "x", items)
        lst = tf.raw_ops.EmptyTensorList(element_shape=tf.constant([2]), max_num_elements=4, element_dtype=tf.float32)
        for i in range(3):
            lst = tf.raw_ops.TensorListPushBack(input_handle=lst, tensor=x[i])
        lst = tf.raw_ops.TensorListResize(input_handle=lst, size=tf.constant(size))
        stacked = tf.raw_ops.TensorListStack(input_handle=lst, element_shape=tf.constant([2]),
                                             element_dtype=tf.float32)
        return stacked, tf.raw_ops.TensorListLength(input_handle=lst)

    return case(build, {"x:0": items}, grads=True)


def case_reserved_list_resize(seed):
    item = randn(2, seed=seed)

    def build(tf):
        lst = tf.raw_ops.TensorListReserve(element_shape=tf.constant([2]), num_elements=3, element_dtype=tf.float32)
        p = ph(tf, "item", item)
        lst = tf.raw_ops.TensorListSetItem(input_handle=lst, index=1, item=p)
        lst = tf.raw_ops.TensorListResize(input_handle=lst, size=tf.constant(5))
        lst = tf.raw_ops.TensorListSetItem(input_handle=lst, index=4, item=p * 2)
        return tf.raw_ops.TensorListStack(input_handle=lst, element_shape=tf.constant([2]), element_dtype=tf.float32)

    return case(build, {"item:0": item}, grads=True)


def test_tensor_list_resize():
    run_cases(
        [case_list_resize(size, seed=i) for i, size in enumerate([0, 2, 4, 6])]
        + [case_pushed_list_resize(size, seed=10 + i) for i, size in enumerate([1, 3, 5])]
        + [case_reserved_list_resize(seed=20)]
    )


# -- SparseFillEmptyRows --------------------------------------------------------------------------

# (indices, dense_shape): unordered rows, empty rows at start/middle/end, rank 3, no entries
SPARSE = [
    ([[1, 0], [3, 2], [1, 1], [0, 4]], [5, 6]),
    ([[0, 0], [1, 1], [2, 2]], [3, 3]),
    ([[2, 1, 0], [2, 0, 1], [0, 0, 0]], [4, 2, 2]),
    (np.zeros((0, 2), np.int64), [3, 4]),
    (np.zeros((0, 2), np.int64), [0, 4]),
]


def case_sparse_fill(indices, shape, seed):
    indices = np.asarray(indices, np.int64).reshape(-1, len(shape))
    values = randn(len(indices), seed=seed)
    default = np.float32(-7.5)

    def build(tf):
        return list(tf.raw_ops.SparseFillEmptyRows(
            indices=tf.constant(indices), values=ph(tf, "values", values),
            dense_shape=tf.constant(np.asarray(shape, np.int64)), default_value=ph(tf, "default", default),
        ))

    return case(build, {"values:0": values, "default:0": default}, grads=True)


def test_sparse_fill_empty_rows():
    run_cases([case_sparse_fill(*c, seed=i) for i, c in enumerate(SPARSE)])


def test_sparse_fill_empty_rows_fed_indices():
    indices = np.asarray([[2, 0], [0, 1], [2, 1]], np.int64)
    values = np.asarray([1, 2, 3], np.int32)

    def build(tf):
        return list(tf.raw_ops.SparseFillEmptyRows(
            indices=ph(tf, "indices", indices), values=ph(tf, "values", values),
            dense_shape=tf.constant(np.asarray([4, 3], np.int64)), default_value=tf.constant(9),
        ))

    compare_with_tf(build, {"indices:0": indices, "values:0": values}, jit_modes=(False,))
    run = run_tf(build, {"indices:0": indices, "values:0": values})
    f = jax.jit(run.graph.function(run.fetch_names, feeds=["indices:0", "values:0"]))
    with pytest.raises(jaxmeta.GraphError, match="jax.jit"):
        f({}, indices, values)


# -- CTCGreedyDecoder -----------------------------------------------------------------------------


def _ctc_inputs(time, batch, classes, seed):
    rng = np.random.default_rng(seed)
    # Few classes and repeated arg-maxes so that merging and blanks matter.
    best = rng.integers(0, classes, (time, batch))
    logits = rng.standard_normal((time, batch, classes)).astype(np.float32)
    logits[np.arange(time)[:, None], np.arange(batch)[None, :], best] += 3.0
    return logits


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("blank", [-1, 0, 2])
def test_ctc_greedy_decoder(merge, blank):
    logits = _ctc_inputs(7, 3, 4, seed=blank + 5)
    lengths = np.asarray([7, 4, 0], np.int32)

    def build(tf):
        return list(tf.raw_ops.CTCGreedyDecoder(
            inputs=ph(tf, "x", logits), sequence_length=ph(tf, "len", lengths), merge_repeated=merge,
            blank_index=blank,
        ))

    compare_with_tf(build, {"x:0": logits, "len:0": lengths}, jit_modes=(False,))


def test_ctc_greedy_decoder_under_jit_raises():
    logits, lengths = _ctc_inputs(3, 2, 3, seed=0), np.asarray([3, 2], np.int32)

    def build(tf):
        return list(tf.raw_ops.CTCGreedyDecoder(inputs=ph(tf, "x", logits), sequence_length=ph(tf, "len", lengths)))

    run = run_tf(build, {"x:0": logits, "len:0": lengths})
    f = jax.jit(run.graph.function(run.fetch_names, feeds=["x:0", "len:0"]))
    with pytest.raises(jaxmeta.GraphError, match="jax.jit"):
        f({}, logits, lengths)


# -- Placeholder ----------------------------------------------------------------------------------


def test_placeholder_is_listed_and_unfed_raises():
    assert {"Placeholder", "PlaceholderV2"} <= set(jaxmeta.supported_ops())

    def build(tf):
        return tf.compat.v1.placeholder(tf.float32, [2], name="p") * 2.0

    run = run_tf(build, {"p:0": np.ones(2, np.float32)})
    with pytest.raises(jaxmeta.FeedError, match="p:0"):
        run.graph.function(run.fetch_names)({})
